"""`ray job submit --working-dir . -- python jobs/evaluate.py ...`: the same as `clipsep-ray evaluate ...`."""
from _job import run  # jobs/ is on sys.path: Python puts a script's folder there

if __name__ == "__main__":
    run("evaluate")
