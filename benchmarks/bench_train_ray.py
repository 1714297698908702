"""Ray Train throughput on this machine: mixtures/s with 1 and 2 workers, and the share of
step time spent waiting for data (``data_wait_frac`` as reported by the workers).

Needs embedded shards, e.g. the demo's: ``clipsep-ray demo --out demo-out`` then
    python benchmarks/bench_train_ray.py --data demo-out/store/embedded/train --clip demo-out/cache/clip/synth-clip.pth
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="embedded train shards")
    p.add_argument("--clip", default="", help="CLIP weights recorded in the config (not needed for training)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--out", default=None, help="append the rows (JSON lines) to this file")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    import ray

    from clipsep_ray.config import load_config
    from clipsep_ray.train.trainer import train

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    for w in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config("tiny", [f"data.train_uri={args.data}", "data.val_clips=0", f"train.num_workers={w}",
                                       f"train.max_steps={args.steps}", f"train.checkpoint_every={args.steps // 2}",
                                       f"run.storage_path={tmp}", f"run.name=bench{w}",
                                       f"query.clip_pretrained={args.clip}"] + args.overrides)
            t0 = time.time()
            summary = train(cfg)
            m = summary["metrics"]  # the second half of the run: past start-up and the first epoch's warm-up
            rows.append({"workers": w, "global_batch": cfg.train.batch_size, "steps": args.steps,
                         "mixtures_per_s": m["clips_per_s"], "data_wait_frac": m["data_wait_frac"],
                         "wall_s": round(time.time() - t0, 1), "cpus": os.cpu_count()})
            print(json.dumps(rows[-1]), flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(rows[-1]) + "\n")
    ray.shutdown()
    return rows


if __name__ == "__main__":
    main()
