"""Train the small CLIP of the synthetic world and save it as an ordinary open_clip checkpoint."""
from __future__ import annotations

import argparse

from clipsep_ray.commands import options

HELP = "train and save the synthetic world's small CLIP"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from clipsep_ray.synth.clip import ClipSpec

    d = ClipSpec()
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--train-per-class", type=int, default=d.train_per_class)
    p.add_argument("--heldout-per-class", type=int, default=d.heldout_per_class)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--eval-world", default=None, metavar="INDEX_CSV",
                   help="also report zero-shot accuracy on the test videos of a world (its index.csv)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads while training (1 is safer on a busy machine)")


def execute(args: argparse.Namespace) -> dict:
    from clipsep_ray.synth.clip import ensure_clip, video_frame_accuracy

    result = ensure_clip(args.out_dir, seed=args.seed, steps=args.steps, batch_size=args.batch_size,
                         threads=args.threads, train_per_class=args.train_per_class,
                         heldout_per_class=args.heldout_per_class, lr=args.lr)
    if args.eval_world:
        result.update(video_frame_accuracy(result["checkpoint"], args.eval_world))
    return result


def run(args: argparse.Namespace) -> int:
    options.print_json(execute(args))
    return 0
