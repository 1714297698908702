"""``clipsep-ray``: the command-line entry point.

``clipsep-ray COMMAND ...`` parses COMMAND's own options (``clipsep_ray.commands``) and
runs it; the exit status is 0 when everything succeeded, 1 when some inputs failed (named
in the output), 2 for bad usage, config, query or checkpoint. Nothing heavy is imported
until a command runs: ``--help`` answers without torch or Ray.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from clipsep_ray.commands import COMMANDS, command, parse


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: it only lists the commands (each parses its own options)."""
    parser = argparse.ArgumentParser(
        prog="clipsep-ray",
        description="Text-queried sound separation (CLIPSep + noise invariant training) on Ray. "
                    "Run 'clipsep-ray COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<17} {command(n).HELP}" for n in COMMANDS))
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        build_parser().parse_args(argv[:1])  # prints the known commands and exits with status 2
    name, rest = argv[0], argv[1:]
    args = parse(name, rest)
    try:
        code = command(name).run(args)
    except KeyboardInterrupt:  # Ctrl-C: what each command keeps on an interruption is its own (the archive's manifest)
        print(f"interrupted: clipsep-ray {name} stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # the library's "bad input" errors are values with a message
        if not _is_usage_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"command {name!r} returned {code!r}, not an exit code")
    return code


def _is_usage_error(exc: Exception) -> bool:
    from clipsep_ray.config import ConfigError
    from clipsep_ray.models.checkpoint import CheckpointError
    from clipsep_ray.models.query import QueryError

    from clipsep_ray.batch.archive import ArchiveError
    from clipsep_ray.batch.inputs import InputError

    return isinstance(exc, (ConfigError, CheckpointError, QueryError, FileNotFoundError, ArchiveError, InputError))


if __name__ == "__main__":
    sys.exit(main())
