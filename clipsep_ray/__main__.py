import sys

from clipsep_ray.cli import main

sys.exit(main())
