"""`ray job submit --working-dir . -- python jobs/ingest.py ...`: see clipsep_ray.data.ingest.main_ingest."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for --working-dir
from clipsep_ray.data.ingest import main_ingest  # noqa: E402

if __name__ == "__main__":
    main_ingest(sys.argv[1:])
