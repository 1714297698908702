"""Options that several commands take, with one meaning and one default each.

=================  ==========================================================================
``--address``      a running Ray cluster to join (default: ``RAY_ADDRESS``, else start one)
``--endpoint-url`` S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)
``--config``       preset name or experiment YAML (default: ``paper``, the published setup;
                   ``tiny`` is the CPU-sized one), followed by dotted ``key=value`` overrides
``--device``       auto (a GPU when one is visible) | cpu | cuda | cuda:N
``--actors``       model replicas in a Ray Data actor pool
``--workers``      Ray Train workers
=================  ==========================================================================
"""
from __future__ import annotations

import argparse

DEFAULT_CONFIG = "paper"


def add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="a running Ray cluster to join (default: RAY_ADDRESS, else start a local one)")


def add_endpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", default=None, metavar="URL",
                   help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")


def add_config(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="PRESET_OR_YAML",
                   help=f"preset (paper, tiny) or experiment YAML{what} (default: {DEFAULT_CONFIG})")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. model.num_masks=16")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (a GPU when one is visible), cpu, cuda, cuda:N")


def add_actors(p: argparse.ArgumentParser, default: int | None, what: str) -> None:
    p.add_argument("--actors", type=int, default=default, metavar="N", help=f"model replicas ({what})")


def load(args: argparse.Namespace, extra: list[str] | None = None):
    """The config ``--config`` names, with ``extra`` then the command line's overrides applied."""
    from clipsep_ray.config import load_config

    return load_config(args.config, list(extra or []) + list(args.overrides))


def print_json(result: dict, drop: tuple[str, ...] = ()) -> None:
    import json

    print(json.dumps({k: v for k, v in result.items() if k not in drop}, indent=1, default=str))
