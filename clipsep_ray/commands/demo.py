"""The whole flow on the synthetic world, embedded defaults, CPU: world -> small CLIP ->
ingest -> embed -> train (Ray Train, IMAGE queries only) -> evaluate with TEXT queries ->
OUT/index.html with the SDR table, playable stems and spectrograms. Every stage is cached,
so a second run only redoes what changed."""
from __future__ import annotations

import argparse

from clipsep_ray.commands import options

HELP = "the whole flow on the synthetic world"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="report folder (default ./demo-out)")
    p.add_argument("--storage", default=None,
                   help="object store for shards and runs: a local folder (default OUT/store) or s3://bucket/prefix")
    options.add_address(p)
    p.add_argument("--clips", type=int, default=360, help="training videos in the synthetic world")
    p.add_argument("--test-clips", type=int, default=60, help="test (and validation) videos")
    p.add_argument("--steps", type=int, default=2100, help="training steps (global batch: the tiny preset's 32)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--clip-steps", type=int, default=None, help="small-CLIP training steps (default: its own)")
    p.add_argument("--clip-pictures", type=int, default=None,
                   help="small-CLIP training pictures per class (default: its own)")
    p.add_argument("--examples", type=int, default=3, help="example mixtures in the report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for training (tiny preset)")


def execute(args: argparse.Namespace) -> dict:
    from clipsep_ray.demo import run_demo

    return run_demo(args.out, storage=args.storage, address=args.address, clips=args.clips,
                    test_clips=args.test_clips, steps=args.steps, workers=args.workers, clip_steps=args.clip_steps,
                    clip_pictures=args.clip_pictures, examples=args.examples, seed=args.seed,
                    overrides=args.overrides)


def run(args: argparse.Namespace) -> int:
    execute(args)
    return 0
