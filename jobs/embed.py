"""`ray job submit --working-dir . -- python jobs/embed.py ...`: the same as `clipsep-ray embed ...`."""
from _job import run  # jobs/ is on sys.path: Python puts a script's folder there

if __name__ == "__main__":
    run("embed")
