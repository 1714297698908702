"""The ``clipsep-ray`` subcommands, one module each, all in one style.

A command module has a ``HELP`` line, ``add_arguments(parser)`` and ``run(args) -> int``
(0: all succeeded; 1: some inputs failed, named in the output; 2: bad usage, config,
query or checkpoint). Where a caller wants the library's result rather than an exit code
(tests, notebooks), ``execute(args)`` returns it. Modules import only argparse and
:mod:`.options` at import time, so ``--help`` never loads torch or Ray.
"""
from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import Any, Sequence

#: name -> module under clipsep_ray.commands, in the order ``--help`` lists them.
COMMANDS = {
    "synth": "synth", "synth-clip": "synth_clip", "ingest": "ingest", "embed": "embed", "train": "train",
    "evaluate": "evaluate", "separate": "separate", "separate-archive": "separate_archive", "serve": "serve",
    "tune": "tune", "demo": "demo",
}


def command(name: str) -> ModuleType:
    if name not in COMMANDS:
        raise KeyError(f"unknown command {name!r} (commands: {', '.join(COMMANDS)})")
    return importlib.import_module(f"clipsep_ray.commands.{COMMANDS[name]}")


def build_parser(name: str) -> argparse.ArgumentParser:
    mod = command(name)
    p = argparse.ArgumentParser(prog=f"clipsep-ray {name}", description=mod.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mod.add_arguments(p)
    return p


def parse(name: str, argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command's arguments (options and positionals in any order)."""
    return build_parser(name).parse_intermixed_args(list(argv))


def call(name: str, argv: Sequence[str]) -> Any:
    """The library result of a command (its ``execute``), for callers that want data, not an exit code."""
    return command(name).execute(parse(name, argv))
