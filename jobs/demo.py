"""`ray job submit --working-dir . -- python jobs/demo.py ...`: see clipsep_ray.demo.main_demo."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for --working-dir
from clipsep_ray.demo import main_demo  # noqa: E402

if __name__ == "__main__":
    main_demo(sys.argv[1:])
