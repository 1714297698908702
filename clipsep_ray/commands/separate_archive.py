"""Separate every audio or video file of an archive (a folder, an s3:// prefix, or a CSV /
Parquet list of URIs) on Ray Data: one stem per --query plus the residual for each input,
under OUTPUT_URI/<relative path without its extension>/, at the input's rate and exact length.

OUTPUT_URI/_manifest.parquet and _manifest.csv get one row per input (done or failed, with
the reason). Outputs appear only when complete; a killed job re-run with the same command
finishes what is missing and repeats nothing. Exit status 0 when every input is done, 1 when
some failed (named, and counted in the last line), 2 for a bad checkpoint, query or URI.
"""
from __future__ import annotations

import argparse

from clipsep_ray.commands import options

HELP = "separate a whole archive on Ray Data (resumable, with a manifest)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input_uri", metavar="INPUT_URI", help="folder, s3:// prefix, or a .csv/.parquet list of URIs")
    p.add_argument("output_uri", metavar="OUTPUT_URI", help="output folder or prefix")
    p.add_argument("--checkpoint", required=True, metavar="URI", help="model checkpoint (file or folder; local or s3://)")
    p.add_argument("--query", action="append", required=True, metavar="TEXT", help="a sound to extract; repeat for several")
    p.add_argument("--format", choices=["flac", "wav"], default="flac",
                   help="output format (default flac: lossless, so stems + residual add up to the input)")
    options.add_actors(p, None, "model actors in the pool; default: as many as the cluster's GPUs or CPUs hold "
                                "(--gpus-per-actor, --cpus-per-actor), at most one per input")
    p.add_argument("--gpus-per-actor", type=float, default=None, metavar="F",
                   help="GPUs per model actor (default: 1 when the cluster has GPUs, else 0); 0.5 puts 2 actors on a GPU")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="F", help="CPUs per model actor")
    p.add_argument("--task-cpus", type=float, default=0.5, metavar="F", help="CPUs per decode / encode task")
    p.add_argument("--pipeline", choices=["auto", "staged", "fused"], default="auto",
                   help="staged: decode and encode in CPU tasks, the model in the actors; fused: each actor does all "
                        "three in one pass; auto (default): staged when the actors have GPUs, else fused")
    p.add_argument("--object-store-mb", type=float, default=None, metavar="MB",
                   help="object-store budget of the pipeline (default: Ray Data's)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of another checkpoint or query set in OUTPUT_URI")
    options.add_address(p)
    options.add_endpoint(p)


def execute(args: argparse.Namespace) -> dict:
    from clipsep_ray.batch.archive import separate_archive

    return separate_archive(args.checkpoint, args.query, args.input_uri, args.output_uri, fmt=args.format,
                            actors=args.actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                            task_cpus=args.task_cpus, address=args.address, endpoint=args.endpoint_url,
                            overwrite=args.overwrite, object_store_mb=args.object_store_mb, pipeline=args.pipeline)


def run(args: argparse.Namespace) -> int:
    s = execute(args)
    for uri, reason in s["failures"]:
        print(f"failed: {uri}: {reason}")
    print(f"separated {s['done']} of {s['inputs']} inputs into {s['output_uri']} ({s['already_done']} already done, "
          f"{s['failed']} failed, {s['audio_hours']:.3f} h of audio, {s['wall_s']} s)")
    return 1 if s["failed"] else 0
