"""Separate each INPUT (audio or video file; folders are walked recursively) into one stem
per --query plus the residual (everything else).

Writes OUTDIR/<input name>/<query slug>.<ext> and residual.<ext> at the input's own sample
rate and length. Long files are streamed in overlapping windows, so memory does not grow
with length. Exit status 0 only when every input succeeded; 1 when some failed (each named).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from clipsep_ray.commands import options

HELP = "separate audio/video files or folders with text queries"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio/video files or folders (local paths or fsspec URIs)")
    p.add_argument("--checkpoint", required=True, metavar="URI", help="model checkpoint (file or folder; local or s3://)")
    p.add_argument("--query", action="append", required=True, metavar="TEXT",
                   help='a sound to extract, e.g. "dog barking"; repeat for several (the model runs once per window '
                        'for all of them)')
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    p.add_argument("--format", choices=["wav", "flac", "ogg"], default=None,
                   help="output format (default: the input's if wav or flac, else flac: lossless, so the stems and "
                        "the residual add up to the input; ogg only when asked for)")
    options.add_device(p)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                   help="auto uses bf16 where the hardware has it (default: the checkpoint's inference setting)")
    p.add_argument("--batch-windows", type=int, default=None, help="windows per U-Net call")
    p.add_argument("--overlap", type=float, default=None, help="fraction of a window cross-faded with its neighbour")
    p.add_argument("--clip-pretrained", default=None, metavar="PATH_OR_TAG",
                   help="where to load the CLIP text encoder's weights from (default: as recorded in the checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def collect_inputs(inputs: Sequence[str]) -> list[tuple[str, str]]:
    """(source, output name) for every media file; folders are walked recursively, in sorted order."""
    from clipsep_ray.audio.io import extension, is_media_file
    from clipsep_ray.storage import slug, url_to_fs

    def stem(name: str) -> str:  # "...wav" -> "..": the extension is what follows the last dot
        return name[: len(name) - len(extension(name))]

    found: list[tuple[str, str]] = []
    for item in inputs:
        fs, path = url_to_fs(item)
        if fs.isdir(path):
            proto = item.split("://")[0] + "://" if "://" in item else ""
            for f in sorted(fs.find(path)):
                if is_media_file(f):
                    rel = stem(os.path.relpath(f, path))
                    found.append((proto + f if proto else f, "/".join(slug(p, 80, "_") for p in rel.split(os.sep))))
        else:
            found.append((item, slug(stem(os.path.basename(path)), 80, "_")))
    names: dict[str, int] = {}
    unique = []
    for src, name in found:  # two inputs with one name must not overwrite each other
        names[name] = names.get(name, 0) + 1
        unique.append((src, name if names[name] == 1 else f"{name}_{names[name]}"))
    return unique


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from clipsep_ray.separate import Separator

    overrides = {k: v for k, v in (("precision", args.precision), ("batch_windows", args.batch_windows),
                                   ("overlap", args.overlap)) if v is not None}
    sep = Separator.from_checkpoint(args.checkpoint, device=args.device, clip_pretrained=args.clip_pretrained,
                                    **overrides)
    inputs = collect_inputs(args.inputs)
    if not inputs:
        print(f"error: no audio or video files found in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    names, _ = sep.projections(args.query)  # validates the queries before any work
    failures = []
    for src, name in tqdm(inputs, desc="separating", unit="file", disable=args.no_progress):
        try:
            sep.separate_file(src, f"{args.out.rstrip('/')}/{name}", names, format=args.format)
        except (ValueError, OSError, RuntimeError) as exc:
            failures.append((src, str(exc)))
            tqdm.write(f"failed: {src}: {exc}", file=sys.stderr)
    print(f"separated {len(inputs) - len(failures)} of {len(inputs)} inputs into {args.out} "
          f"({len(names)} queries + residual each)")
    return 1 if failures else 0
