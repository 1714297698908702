"""`ray job submit --working-dir . -- python jobs/train.py ...`: see clipsep_ray.train.trainer.main_train."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for --working-dir
from clipsep_ray.train.trainer import main_train  # noqa: E402

if __name__ == "__main__":
    main_train(sys.argv[1:])
