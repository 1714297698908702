"""Video files -> Parquet clip shards (Ray Data).

Writes OUTPUT_URI/part-*.parquet, _errors.parquet (every rejected file and why) and
_manifest.json. A re-run ingests only files not yet in the manifest. Exit status 1 when some
files were rejected (each named).
"""
from __future__ import annotations

import argparse

from clipsep_ray.commands import options

HELP = "video files -> Parquet shards (Ray Data)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input_uri", help="folder, s3:// prefix, one video, or an index CSV (path[,label][,clip_id][,...]); "
                                     "'-' with --index")
    p.add_argument("output_uri", help="output folder / prefix for shards, _errors.parquet, _manifest.json")
    options.add_config(p, " (sets audio.sample_rate, query.fps)")
    p.add_argument("--index", help="CSV listing the videos (relative paths resolve against its folder; an optional "
                                    "clip_id column names each video, and clip ids then do not depend on where "
                                    "the files are stored)")
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--min-clip-seconds", type=float, default=None, help="default: min(8, clip seconds)")
    p.add_argument("--frame-size", type=int, default=224)
    p.add_argument("--rows-per-shard", type=int, default=1000)
    p.add_argument("--shard-mb", type=float, default=256.0)
    p.add_argument("--files-per-task", type=int, default=32)
    p.add_argument("--overwrite", action="store_true", help="re-ingest files already in the output")
    options.add_endpoint(p)
    options.add_address(p)


def execute(args: argparse.Namespace) -> dict:
    from clipsep_ray.data.ingest import IngestOptions, ingest

    cfg = options.load(args)
    opts = IngestOptions(sample_rate=cfg.audio.sample_rate, clip_seconds=args.clip_seconds,
                         min_clip_seconds=args.min_clip_seconds, fps=cfg.query.fps, frame_size=args.frame_size,
                         max_rows_per_shard=args.rows_per_shard, max_bytes_per_shard=int(args.shard_mb * (1 << 20)),
                         files_per_task=args.files_per_task)
    inp = None if args.input_uri == "-" else args.input_uri
    return ingest(inp, args.output_uri, opts, index=args.index, overwrite=args.overwrite,
                  endpoint=args.endpoint_url, address=args.address)


def run(args: argparse.Namespace) -> int:
    result = execute(args)
    options.print_json(result, drop=("shards", "errors"))
    for e in result["errors"]:
        print(f"rejected: {e['path']}: {e['reason']}")
    print(f"ingested {result['files_ok']} files ({result['clips_written']} clips), "
          f"{result['files_rejected']} rejected, {result['files_skipped']} already there")
    return 1 if result["files_rejected"] else 0
