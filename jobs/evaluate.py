"""`ray job submit --working-dir . -- python jobs/evaluate.py ...`: see clipsep_ray.evaluate.main_evaluate."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for --working-dir
from clipsep_ray.evaluate import main_evaluate  # noqa: E402

if __name__ == "__main__":
    main_evaluate(sys.argv[1:])
