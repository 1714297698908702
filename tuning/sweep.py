"""`ray job submit --working-dir . -- python tuning/sweep.py --sweep tuning/masks.yaml ...`: the same as `clipsep-ray tune ...`."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs"))
from _job import run  # noqa: E402  (jobs/_job.py puts the working directory on sys.path)

if __name__ == "__main__":
    run("tune")
