"""`ray job submit --working-dir . -- python jobs/demo.py ...`: the same as `clipsep-ray demo ...`."""
from _job import run  # jobs/ is on sys.path: Python puts a script's folder there

if __name__ == "__main__":
    run("demo")
