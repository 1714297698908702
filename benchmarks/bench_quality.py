"""The full results table on the synthetic world: the paper's rows where they apply.

Trains each variant (``tiny`` preset, the same step budget) on the clean and/or the
noisy world and evaluates all of them on the same clean test mixtures with the published
protocol; the mixture and the oracle masks are rows too. Long: about one demo's training
time per variant and world (it may take an hour or more on 2 cores).

    python benchmarks/bench_quality.py --out bench-quality --steps 1500 \
        [--worlds clean noisy] [--variants clipsep clipsep-text clipsep-hybrid clipsep-nit labelsep pit]

Writes OUT/results.json, OUT/results.md and one folder per run; a run whose folder already
holds results.json is reused, so an interrupted benchmark resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import time

VARIANTS = {
    "clipsep": ["train.mode=image"],
    "clipsep-text": ["train.mode=text"],
    "clipsep-hybrid": ["train.mode=hybrid"],
    "clipsep-nit": ["train.mode=image", "model.noise_heads=2"],
    "labelsep": ["model.arch=labelsep", "train.mode=text"],
    "pit": ["model.arch=pit"],
}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench-quality")
    p.add_argument("--worlds", nargs="+", default=["clean", "noisy"], choices=["clean", "noisy"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--noisy-variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="variants trained on the noisy world (default: --variants)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--clips", type=int, default=360)
    p.add_argument("--test-clips", type=int, default=60)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    from clipsep_ray.config import load_config
    from clipsep_ray.demo import _copy_checkpoint, prepare_world
    from clipsep_ray.evaluation import evaluate_checkpoint
    from clipsep_ray.evaluation.protocol import markdown_table
    from clipsep_ray.synth.world import CLASSES
    from clipsep_ray.train.trainer import train

    out = os.path.abspath(args.out)
    store = os.path.join(out, "store")
    rows: list[dict] = []
    bounds_done = False
    test_uri = None
    for world in args.worlds:
        data = prepare_world(out, store, split=world, clips=args.clips, test_clips=args.test_clips, seed=args.seed)
        # Every variant is scored on the same test mixtures: the first world's test set (its
        # clips are clean in both worlds; only the training clips of the noisy world are noisy).
        test_uri = test_uri or data["test"]
        for variant in (args.noisy_variants or args.variants) if world == "noisy" else args.variants:
            name = f"{world}-{variant}"
            cfg = load_config("tiny", [f"query.clip_pretrained={data['clip_checkpoint']}",
                                       f"train.max_steps={args.steps}", f"train.decay_steps={args.steps}",
                                       f"train.num_workers={args.workers}", f"train.seed={args.seed}",
                                       f"model.num_labels={len(CLASSES)}", f"run.storage_path={store}/runs",
                                       f"run.name={name}", f"data.train_uri={data['train']}",
                                       f"data.val_uri={data['val']}", "data.val_clips=24"]
                              + VARIANTS[variant] + args.overrides)
            done_file = os.path.join(out, name, "results.json")
            t0 = time.time()
            if os.path.exists(done_file):  # finished by an earlier, interrupted invocation: reuse it
                with open(done_file) as fh:
                    result = json.load(fh)
                for r in result:  # results written before the rename of "query" to "query_kind"
                    if "query" in r:
                        r["query_kind"] = r.pop("query")
                print(f"[bench] {name}: reusing {done_file}", flush=True)
            else:
                summary = train(cfg)
                ckpt = os.path.join(out, "checkpoints", name)
                _copy_checkpoint(summary["best_checkpoint"] or summary["latest_checkpoint"], ckpt)
                result = evaluate_checkpoint(ckpt, test_uri, os.path.join(out, name), train_data=world).summary
                for r in result:
                    r["train_eval_s"] = round(time.time() - t0, 1)
                with open(done_file, "w") as fh:
                    json.dump(result, fh, indent=1)
            for r in result:
                if r["method"] in ("mixture", "oracle-ibm", "oracle-irm"):
                    if bounds_done:
                        continue
                else:
                    r["variant"] = variant
                rows.append(r)
            bounds_done = True
            with open(os.path.join(out, "results.json"), "w") as fh:
                json.dump(rows, fh, indent=1)
            with open(os.path.join(out, "results.md"), "w") as fh:
                fh.write(markdown_table(rows))
            print(markdown_table(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
