"""`ray job submit --working-dir . -- python jobs/separate_archive.py ...`: the same as `clipsep-ray separate-archive ...`."""
from _job import run  # jobs/ is on sys.path: Python puts a script's folder there

if __name__ == "__main__":
    run("separate-archive")
