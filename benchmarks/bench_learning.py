"""Learning curve in one process: validation SDRi against steps and wall time, for config overrides.

Which settings learn fastest per second of CPU? This trains the ``tiny`` preset (or another)
in-process, without Ray, on the rows of an embedded shard set held in memory (fresh random
windows for every pass, as the Ray input does), with the same ``train_step``, optimiser and
schedule as the training driver, and scores the validation clips every ``--eval-every`` steps
with ``evaluate_rows`` (soft masks, fp32, the training prompt for text queries, or with
``--ensemble`` the prompt ensemble the test-set evaluation uses). It leaves out
what the Ray run adds (data-plane tasks, DDP, checkpoints), so compare settings with it and
take the demo's figures from the demo.

Usage (the demo's data):
  python benchmarks/bench_learning.py --data demo-out/store/clean/embedded --steps 1000 \\
      audio.clip_samples=8191 train.batch_size=32 [--precision fp32] [--out curve.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import pyarrow as pa
import torch

from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.config import load_config
from clipsep_ray.data import schema
from clipsep_ray.data.shards import READ_COLUMNS, RowPrep, eval_rows
from clipsep_ray.evaluation.protocol import BOUND_METHODS, eval_pairs, evaluate_rows
from clipsep_ray.models.registry import build_model
from clipsep_ray.train.loop import WeightAverage, make_optimizer, train_step


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="embedded shards with train/ and val/ (and train/_text_embeddings)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--passes", type=int, default=12, help="passes of random windows prepared up front")
    p.add_argument("--out", default=None, help="append the curve as JSON lines")
    p.add_argument("--ema", type=float, nargs="*", default=[],
                   help="also score moving averages of the weights with these decays, on the same trajectory")
    p.add_argument("--ensemble", action="store_true",
                   help="score text queries with the prompt-ensemble embedding (as the evaluation on the test set "
                        "does) instead of the training prompt")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    cfg = load_config(args.preset, [f"train.max_steps={args.steps}", f"train.decay_steps={args.steps}"]
                      + args.overrides)
    data = args.data.rstrip("/")
    files = schema.list_shards(f"{data}/train", None)
    table = pa.concat_tables([schema.read_shard(f, READ_COLUMNS, None) for f in files])
    prep, rng = RowPrep.from_config(cfg), np.random.default_rng(cfg.train.seed)
    passes = [prep.prepare(table, "train", rng)[0] for _ in range(args.passes)]
    val = eval_rows(f"{data}/val", cfg, text_embeddings=f"{data}/train/_text_embeddings.parquet",
                    ensemble=args.ensemble)
    pairs = eval_pairs(len(val["audio"]), labels=val.get("label"))

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, cfg.train)
    frontend = SpectralFrontEnd.from_config(cfg.audio)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    amp = torch.bfloat16 if args.precision == "bf16" else None
    batch_size, n_rows = cfg.train.batch_size, len(passes[0]["audio"])
    averages = {d: WeightAverage(model, d) for d in args.ema}
    curve, step, t0 = [], 0, time.perf_counter()
    while step < args.steps:
        rows = passes[(step * batch_size // n_rows) % len(passes)]
        order = np.random.default_rng(step).permutation(len(rows["audio"]))
        for s in range(0, len(order) - batch_size + 1, batch_size):
            batch = {k: torch.as_tensor(v[order[s:s + batch_size]]) for k, v in rows.items()}
            metrics, _ = train_step(model, frontend, batch, cfg, step, gen, opt, sched, amp)
            step += 1
            for average in averages.values():
                average.update(model)
            if step % args.eval_every == 0 or step == args.steps:
                train_s = time.perf_counter() - t0
                model.eval()
                summary, _ = evaluate_rows(model, cfg, val, pairs, bounds=step == args.steps)
                for d, average in averages.items():
                    summary += [{**r, "query_kind": f"{r['query_kind']}_ema{d}"}
                                for r in evaluate_rows(average.model, cfg, val, pairs, bounds=False)[0]]
                point = {"step": step, "train_s": round(train_s, 1), "s_per_step": round(train_s / step, 3),
                         "loss": round(metrics["loss"], 4), "overrides": args.overrides, "precision": args.precision,
                         "text_prompt": "ensemble" if args.ensemble else "template",
                         "val_clips": len(val["audio"]), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                         **{f"sdri_{r['method'] if r['method'] in BOUND_METHODS else r['query_kind']}":
                            round(r["sdri_mean"], 2) for r in summary}}
                print(json.dumps(point), flush=True)
                curve.append(point)
                t0 += time.perf_counter() - t0 - train_s  # validation time is not training time
            if step >= args.steps:
                break
    if args.out:
        with open(args.out, "a") as fh:
            fh.writelines(json.dumps(c) + "\n" for c in curve)
    return curve


if __name__ == "__main__":
    main()
