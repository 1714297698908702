"""Evaluation: the protocol (:mod:`.protocol`), two engines with one result type
(:mod:`.local` in one process, :mod:`.distributed` on Ray Data), and this front door.

``evaluate_checkpoint`` picks the engine, runs it and writes ``results.json`` (summary rows),
``results.md`` (the table) and ``per_clip.csv`` (one row per scored mixture). Both engines
give the same mixtures and the same table.
"""
from __future__ import annotations

import csv
import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the protocol imports torch; this package's constants are read by --help
    from clipsep_ray.evaluation.protocol import EvalResult

RAY_THRESHOLD = 2000  # test clips from which engine "auto" evaluates on Ray Data
ENGINES = ("auto", "local", "ray")

__all__ = ["ENGINES", "RAY_THRESHOLD", "choose_engine", "evaluate_checkpoint", "write_outputs"]


def choose_engine(engine: str, data_uri, *, address: str | None = None, limit: int | None = None,
                  threshold: int = RAY_THRESHOLD, endpoint: str | None = None) -> str:
    """"local" or "ray". ``engine`` "ray"/"local" force it; "auto" uses Ray Data for a cluster
    (``address`` or ``RAY_ADDRESS``) or when the shards hold at least ``threshold`` rows (read from
    the Parquet footers, no data), ``limit`` counted."""
    from clipsep_ray.runtime import ray_address

    if engine not in ENGINES:
        raise ValueError(f"--engine must be {', '.join(ENGINES)}, not {engine!r}")
    if engine != "auto":
        return engine
    if ray_address(address):
        return "ray"
    from clipsep_ray.data.shards import count_shard_rows

    rows = count_shard_rows(data_uri, endpoint)
    return "ray" if (rows if limit is None else min(rows, limit)) >= threshold else "local"


def write_outputs(out_dir: str, result: "EvalResult") -> dict[str, str]:
    from clipsep_ray.evaluation.protocol import PER_CLIP_COLUMNS, markdown_table

    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"), "md": os.path.join(out_dir, "results.md"),
             "csv": os.path.join(out_dir, "per_clip.csv")}
    with open(paths["json"], "w") as fh:
        json.dump(result.summary, fh, indent=1)
    with open(paths["md"], "w") as fh:
        fh.write(markdown_table(result.summary))
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(PER_CLIP_COLUMNS))
        w.writeheader()
        w.writerows(result.per_clip)
    return paths


def evaluate_checkpoint(checkpoint: str, data_uri, out_dir: str | None = None, *, limit: int | None = None,
                        text_embeddings: str | None = None, train_data: str = "", device: str = "auto",
                        engine: str = "auto", actors: int = 2, address: str | None = None,
                        ray_threshold: int = RAY_THRESHOLD, endpoint: str | None = None) -> "EvalResult":
    """Evaluate a checkpoint on the shards at ``data_uri`` (embedded; labelled for text queries).

    ``engine``: "local" (one process), "ray" (Ray Data, ``actors`` scoring actors) or "auto"
    (see :func:`choose_engine`). Every summary row also carries ``rows_skipped_unreadable``.
    """
    from clipsep_ray import storage
    from clipsep_ray.data.schema import text_embeddings_uri
    from clipsep_ray.runtime import resolve_device

    endpoint = storage.endpoint_url(endpoint)
    device = str(resolve_device(device))
    text_uri = text_embeddings_uri(data_uri, text_embeddings, endpoint)
    chosen = choose_engine(engine, data_uri, address=address, limit=limit, threshold=ray_threshold,
                           endpoint=endpoint)
    if chosen == "ray":
        from clipsep_ray.evaluation.distributed import evaluate_distributed
        from clipsep_ray.runtime import init_ray

        init_ray(address)
        result = evaluate_distributed(checkpoint, data_uri, limit=limit, text_embeddings=text_uri,
                                      train_data=train_data, actors=actors, device=device, endpoint=endpoint)
    else:
        from clipsep_ray.evaluation.local import evaluate_local

        result = evaluate_local(checkpoint, data_uri, limit=limit, text_embeddings=text_uri, train_data=train_data,
                                device=device, endpoint=endpoint)
    for r in result.summary:
        r["rows_skipped_unreadable"] = result.rows_skipped
    if result.rows_skipped:
        print(f"[evaluate] skipped {result.rows_skipped} unreadable rows of {data_uri}: {result.reasons}", flush=True)
    if out_dir:
        write_outputs(out_dir, result)
    return result
