"""Write the synthetic world as MP4 videos + index.csv (clean or noisy training split, clean
validation and test sets)."""
from __future__ import annotations

import argparse

from clipsep_ray.commands import options

HELP = "write the synthetic world's MP4 videos + index.csv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir")
    p.add_argument("--clips", type=int, default=280, help="training clips (val/test: max(#classes, clips/10) each)")
    p.add_argument("--split", choices=["clean", "noisy"], default="clean", help="training condition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-clips", type=int, default=None)
    p.add_argument("--test-clips", type=int, default=None)
    p.add_argument("--fps", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--codec", choices=["mpeg4", "libx264"], default="mpeg4",
                   help="video codec: mpeg4 is byte-deterministic, libx264 (H.264) only in content")
    p.add_argument("--offscreen-snr-db", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="noisy world: on-screen over off-screen level range in dB (default: -2 8)")
    p.add_argument("--noisy-fraction", type=float, default=None,
                   help="noisy world: share of training clips that are noisy (default: 1, all)")
    p.add_argument("--processes", type=int, default=None, help="encoding processes (default: up to 2)")


def execute(args: argparse.Namespace) -> dict:
    from clipsep_ray.synth.videos import ensure_world

    extra = {k: v for k, v in (("offscreen_snr_db", tuple(args.offscreen_snr_db or ()) or None),
                               ("noisy_fraction", args.noisy_fraction)) if v is not None}
    return ensure_world(args.out_dir, clips=args.clips, seed=args.seed, split=args.split, workers=args.processes,
                        val_clips=args.val_clips, test_clips=args.test_clips, fps=args.fps, size=args.size,
                        codec=args.codec, **extra)


def run(args: argparse.Namespace) -> int:
    options.print_json(execute(args))
    return 0
