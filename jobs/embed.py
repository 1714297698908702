"""`ray job submit --working-dir . -- python jobs/embed.py ...`: see clipsep_ray.data.embed.main_embed."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for --working-dir
from clipsep_ray.data.embed import main_embed  # noqa: E402

if __name__ == "__main__":
    main_embed(sys.argv[1:])
