"""Hyperparameter sweeps on Ray Tune + Optuna, resumable by study name.

    clipsep-ray tune --sweep FILE [--storage URI] [--study NAME] [--study-storage URL] [--address ADDR] [key=value ...]
    clipsep-ray tune report --storage URI --study NAME [--study-storage URL]

Each trial is a full Ray Train run of `clipsep-ray train` with the trial's parameters; key=value
overrides go to every trial. The Optuna study lives at <storage>/<study>/study.db (SQLite) unless
--study-storage (or the OPTUNA_STORAGE environment variable, which keeps a password off the
command line) names an SQLAlchemy URL (postgresql://...). Running the same command again
continues the study: finished trials are kept, a trial interrupted by a dead driver is recorded
as FAIL and its run resumes from its checkpoint as a new trial; a finished sweep only reports.
The report goes to <storage>/<study>/report/ (trials.csv, trials.md, best.yaml, PNGs, index.html).
"""
from __future__ import annotations

import argparse

from clipsep_ray.commands import options

HELP = "hyperparameter sweep on Ray Tune + Optuna (and 'tune report')"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep", default=None, metavar="FILE", help="sweep file (tuning/*.yaml)")
    p.add_argument("--storage", default="sweeps", metavar="URI",
                   help="where the runs, the SQLite study and the report go (default: sweeps/)")
    p.add_argument("--study", default=None, metavar="NAME", help="study name (default: the sweep file's stem)")
    p.add_argument("--study-storage", default=None, metavar="URL",
                   help="SQLAlchemy URL of the study (default: $OPTUNA_STORAGE if set, else "
                        "sqlite:///<storage>/<study>/study.db)")
    options.add_address(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="'report' for the report of an existing study; else dotted overrides for every trial")


def execute(args: argparse.Namespace) -> dict:
    import os

    from clipsep_ray.config import ConfigError

    args.study_storage = args.study_storage or os.environ.get("OPTUNA_STORAGE") or None
    rest = list(args.overrides)
    if rest[:1] == ["report"]:
        if len(rest) > 1:
            raise ConfigError(f"tune report takes no overrides, got {' '.join(rest[1:])}")
        if not args.study:
            raise ConfigError("tune report needs --study NAME")
        from clipsep_ray.tune.report import report_study

        return report_study(args.storage, args.study, args.study_storage)
    if not args.sweep:
        raise ConfigError("tune needs --sweep FILE (or 'tune report --study NAME')")
    from clipsep_ray.tune.sweep import load_sweep

    sweep = load_sweep(args.sweep, rest)  # every check before anything starts
    from clipsep_ray.tune.driver import run_sweep

    return run_sweep(sweep, storage_uri=args.storage, study=args.study, study_storage=args.study_storage,
                     address=args.address)


def run(args: argparse.Namespace) -> int:
    options.print_json(execute(args))
    return 0
