"""Train CLIPSep (or a baseline) on Ray Train from embedded shards.

Re-running with the same run.name and run.storage_path resumes from the latest checkpoint.
Exit status 0 when the run finished: rows that could not be read are skipped, counted by reason
in the summary (a job scheduler must not retry a finished run because of one corrupt clip).
"""
from __future__ import annotations

import argparse

from clipsep_ray.commands import options

HELP = "train on Ray Train"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_config(p, " (jobs/experiments/*.yaml)")
    p.add_argument("--data", default=None, help="train shards URI (sets data.train_uri)")
    p.add_argument("--val", default=None, help="validation shards URI (sets data.val_uri)")
    p.add_argument("--storage", default=None, help="where runs and checkpoints go (sets run.storage_path)")
    p.add_argument("--name", default=None, help="run name (sets run.name); the same name resumes")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (sets train.num_workers)")
    options.add_endpoint(p)
    options.add_address(p)


def execute(args: argparse.Namespace) -> dict:
    from clipsep_ray.train.trainer import train

    extra = [f"{k}={v}" for k, v in (("data.train_uri", args.data), ("data.val_uri", args.val),
                                     ("run.storage_path", args.storage), ("run.name", args.name),
                                     ("train.num_workers", args.workers), ("data.s3_endpoint", args.endpoint_url))
             if v is not None]
    return train(options.load(args, extra), address=args.address)


def run(args: argparse.Namespace) -> int:
    summary = execute(args)
    options.print_json(summary, drop=("metrics",))
    return 0
