"""Evaluate a checkpoint with the published protocol (docs/METHOD.md, "Evaluation protocol").

One mixture per test clip (an interference clip of another class), text queries through
the prompt ensemble and image queries, beside the unprocessed mixture and the oracle
ideal binary / ratio masks. Writes OUT/results.json, results.md and per_clip.csv.
Runs in one process for small test sets and on Ray Data (an actor pool scoring the
mixtures) from --ray-threshold clips, on a cluster, or with --engine ray; both give the
same table. Exit status 1 when some test rows could not be read (counted by reason).
"""
from __future__ import annotations

import argparse

from clipsep_ray.commands import options

HELP = "evaluate a checkpoint with the published protocol"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from clipsep_ray.evaluation import ENGINES, RAY_THRESHOLD

    p.add_argument("--checkpoint", required=True, help="checkpoint URI (file or Ray checkpoint folder)")
    p.add_argument("--data", required=True, help="embedded test shards URI")
    p.add_argument("--out", required=True, help="output folder for results.json / results.md / per_clip.csv")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N clips (by clip id)")
    p.add_argument("--train-data", default="", help="tag for the train_data column (clean/noisy)")
    options.add_device(p)
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help=f"local: one process; ray: Ray Data with an actor pool; auto (default): ray on a cluster "
                        f"(--address or RAY_ADDRESS) or when the test shards hold at least --ray-threshold rows")
    p.add_argument("--ray-threshold", type=int, default=RAY_THRESHOLD)
    options.add_actors(p, 2, "scoring actors for --engine ray")
    options.add_endpoint(p)
    options.add_address(p)


def execute(args: argparse.Namespace):
    from clipsep_ray.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(args.checkpoint, args.data, args.out, limit=args.limit, train_data=args.train_data,
                               device=args.device, engine=args.engine, actors=args.actors, address=args.address,
                               ray_threshold=args.ray_threshold, endpoint=args.endpoint_url)


def run(args: argparse.Namespace) -> int:
    from clipsep_ray.evaluation.protocol import markdown_table

    result = execute(args)
    print(markdown_table(result.summary))
    return 1 if result.rows_skipped else 0
