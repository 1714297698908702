"""The shipped sweeps on the synthetic world, and the sweep's overhead.

    python benchmarks/bench_tune.py --prepare                # worlds -> sweep-data/store/{clean,noisy}/embedded
    python benchmarks/bench_tune.py --sweep tuning/nit-noisy.yaml [--storage sweeps] [key=value ...]

Runs (or continues) the sweep with ``clipsep-ray tune`` and prints the report's summary: the
best trial and the overhead, the driver's wall time against the sum of the trials' Tune time
(each trial's time includes its Ray Train and Ray Data start-up).
"""
from __future__ import annotations

import argparse
import json


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", action="store_true", help="build the clean and noisy worlds' embedded shards")
    p.add_argument("--out", default="sweep-data")
    p.add_argument("--clips", type=int, default=360)
    p.add_argument("--sweep", default=None)
    p.add_argument("--storage", default="sweeps")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    result: dict = {}
    if args.prepare:
        from clipsep_ray.demo import prepare_world

        for split in ("clean", "noisy"):
            result[split] = prepare_world(args.out, f"{args.out}/store", split=split, clips=args.clips)["counts"]
    if args.sweep:
        from clipsep_ray.commands import call

        out = call("tune", ["--sweep", args.sweep, "--storage", args.storage, *args.overrides])
        result["sweep"] = {k: out.get(k) for k in ("study", "best", "counts", "sweep_wall_s", "trials_sum_s",
                                                   "overhead_frac", "report")}
    print(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
