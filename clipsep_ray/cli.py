"""``clipsep-ray``: the command-line entry point. Each subcommand parses its arguments and
calls the library; heavy imports happen inside the subcommand, never at import time."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from clipsep_ray.separate import slug


def _separate_parser(sub) -> None:
    p = sub.add_parser(
        "separate", help="separate audio/video files or folders with text queries",
        description="Separate each INPUT (audio or video file; folders are walked recursively) into one "
                    "stem per --query plus the residual (everything else). Writes "
                    "OUTDIR/<input name>/<query slug>.<ext> and residual.<ext> at the input's own sample rate "
                    "and length. Long files are streamed in overlapping windows, so memory does not grow with "
                    "length. Exit status 0 only when every input succeeded.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio/video files or folders (local paths or fsspec URIs)")
    p.add_argument("--checkpoint", required=True, metavar="URI", help="model checkpoint (file or folder; local or s3://)")
    p.add_argument("--query", action="append", required=True, metavar="TEXT",
                   help='a sound to extract, e.g. "dog barking"; repeat for several (the model runs once per window '
                        'for all of them)')
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    p.add_argument("--format", choices=["wav", "flac", "ogg"], default=None,
                   help="output format (default: the input's if wav/flac/ogg, else wav)")
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                   help="auto uses bf16 where the hardware has it (default: the checkpoint's inference setting)")
    p.add_argument("--batch-windows", type=int, default=None, help="windows per U-Net call")
    p.add_argument("--overlap", type=float, default=None, help="fraction of a window cross-faded with its neighbour")
    p.add_argument("--clip-pretrained", default=None, metavar="PATH_OR_TAG",
                   help="where to load the CLIP text encoder's weights from (default: as recorded in the checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _collect_inputs(inputs: Sequence[str]) -> list[tuple[str, str]]:
    """(source, output name) for every media file; folders are walked recursively, in sorted order."""
    import fsspec

    from clipsep_ray.audio.io import is_media_file

    found: list[tuple[str, str]] = []
    for item in inputs:
        fs, path = fsspec.core.url_to_fs(item)
        if fs.isdir(path):
            proto = item.split("://")[0] + "://" if "://" in item else ""
            for f in sorted(fs.find(path)):
                if is_media_file(f):
                    rel = os.path.splitext(os.path.relpath(f, path))[0]
                    found.append((proto + f if proto else f, "/".join(slug(p, 80) for p in rel.split(os.sep))))
        else:
            found.append((item, slug(os.path.splitext(os.path.basename(path))[0], 80)))
    names: dict[str, int] = {}
    unique = []
    for src, name in found:  # two inputs with one name must not overwrite each other
        names[name] = names.get(name, 0) + 1
        unique.append((src, name if names[name] == 1 else f"{name}_{names[name]}"))
    return unique


def cmd_separate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from clipsep_ray.separate import Separator

    overrides = {k: v for k, v in (("precision", args.precision), ("batch_windows", args.batch_windows),
                                   ("overlap", args.overlap)) if v is not None}
    sep = Separator.from_checkpoint(args.checkpoint, device=args.device, clip_pretrained=args.clip_pretrained,
                                    **overrides)
    inputs = _collect_inputs(args.inputs)
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


def _passthrough(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand whose arguments are parsed by the library entry point itself."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        result = getattr(importlib.import_module(module), func)(args.rest)
        return result if isinstance(result, int) else 0

    return run


PASSTHROUGH = {
    # name: (module, function, help)
    "synth": ("clipsep_ray.synth.videos", "main_synth", "write the synthetic world's MP4 videos + index.csv"),
    "synth-clip": ("clipsep_ray.synth.clip", "main_synth_clip", "train and save the synthetic world's small CLIP"),
    "ingest": ("clipsep_ray.data.ingest", "main_ingest", "video files -> Parquet shards (Ray Data)"),
    "embed": ("clipsep_ray.data.embed", "main_embed", "add frozen CLIP image embeddings to shards (Ray Data)"),
    "train": ("clipsep_ray.train.trainer", "main_train", "train on Ray Train"),
    "evaluate": ("clipsep_ray.evaluate", "main_evaluate", "evaluate a checkpoint with the published protocol"),
    "demo": ("clipsep_ray.demo", "main_demo", "the whole flow on the synthetic world"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipsep-ray",
        description="Text-queried sound separation (CLIPSep + noise invariant training) on Ray. "
                    "Run 'clipsep-ray COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _separate_parser(sub)
    for name, (module, func, help_) in PASSTHROUGH.items():
        if _available(module):
            p = sub.add_parser(name, help=help_, add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=_passthrough(module, func))
    sub.choices["separate"].set_defaults(func=cmd_separate)
    return parser


def _available(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    from clipsep_ray.config import ConfigError
    from clipsep_ray.models.checkpoint import CheckpointError
    from clipsep_ray.models.query import QueryError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in PASSTHROUGH and argv[0] in parser._subparsers._group_actions[0].choices:
        # These commands parse their own options (argparse's REMAINDER would reject a leading --flag).
        args = argparse.Namespace(rest=argv[1:], func=_passthrough(*PASSTHROUGH[argv[0]][:2]))
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, QueryError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
