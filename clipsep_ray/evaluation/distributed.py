"""The Ray Data evaluation engine, for test sets too large for one process.

The same mixtures and the same table as the local engine (both use
:mod:`clipsep_ray.evaluation.protocol`), with the work spread over a Ray cluster:

1. **prepare** (tasks): read the shards (``audio``, embeddings, ``label``) and cut each
   clip's evaluation window and queries (c = n // 2), as ``eval_rows`` does; unreadable
   rows are skipped and counted. The prepared rows are materialised once.
2. **pair** (driver, metadata only): sort the kept clip ids, choose each target's
   interference clip with ``eval_pairs`` (the local path's function, so the pairs are
   identical), and broadcast ``clip_id -> index`` and ``clip_id -> [targets it interferes with]``.
3. **group**: each target row keyed by its index (role 0), plus one copy of each
   interference row per target that uses it, keyed by that target's index (role 1); a
   ``groupby(key)`` (sort-based shuffle, no hash join) brings each pair together.
4. **score** (an actor pool, ``map_groups`` + ``ActorPoolStrategy``): each actor loads the
   checkpoint once and scores its pairs with ``score_mixtures``; the driver gathers the
   small per-mixture records and summarises them.

Memory: the prepared windows live in the object store (spilled to disk when larger), never
all in the driver.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from clipsep_ray import storage
from clipsep_ray.config import Config, ConfigError
from clipsep_ray.data import schema
from clipsep_ray.data.shards import check_unique_clip_ids
from clipsep_ray.evaluation.protocol import EvalResult, eval_pairs, score_mixtures, summarize_records

log = logging.getLogger(__name__)

META_COLUMNS = ("clip_id", "label")


def _prep_eval_batch(batch, cfg: Config, text_uri: str | None, endpoint: str | None, stats, allowed=None) -> dict:
    """pyarrow shard rows -> prepared evaluation rows (numeric columns + clip_id, label).
    ``allowed`` (a set of clip ids, or its object ref): rows outside it are dropped unread."""
    import pyarrow as pa

    from clipsep_ray.data.shards import RowPrep, cached_text_embeddings, kept_columns

    if allowed is not None:
        allowed = allowed if isinstance(allowed, (set, frozenset)) else _get(allowed)
        mask = [c in allowed for c in batch.column("clip_id").to_pylist()]
        batch = batch.filter(pa.array(mask, pa.bool_()))
    prep = RowPrep.from_config(cfg, cached_text_embeddings(text_uri, True, endpoint) if text_uri else None, "eval")
    out, failures = prep.prepare(batch, "eval")
    for clip, source, reason in failures[:5]:
        log.warning("skipping clip %s of %s: %s", clip, source, reason)
    if stats is not None:
        stats.add(len(out["clip_index"]), failures)
    meta = kept_columns(batch, failures, ("clip_id", "label"))
    out["clip_id"] = np.asarray(meta["clip_id"], dtype=object)
    out["label"] = np.asarray(["" if lab is None else lab for lab in meta["label"]], dtype=object)
    return out


def _as_targets(batch: dict, index) -> dict:
    """Keep the rows that are targets (within ``limit``): key = their index, role 0."""
    index = index if isinstance(index, dict) else _get(index)
    keep = [i for i, c in enumerate(batch["clip_id"]) if c in index]
    out = {k: np.asarray(v)[keep] for k, v in batch.items()}
    out["key"] = np.asarray([index[c] for c in out["clip_id"]], np.int64)
    out["role"] = np.zeros(len(keep), np.int8)
    return out


def _as_interferers(batch: dict, users) -> dict:
    """One copy of each row per target it interferes with: key = that target's index, role 1."""
    users = users if isinstance(users, dict) else _get(users)
    rows, keys = [], []
    for i, c in enumerate(batch["clip_id"]):
        for t in users.get(c, ()):
            rows.append(i)
            keys.append(t)
    out = {k: np.asarray(v)[rows] for k, v in batch.items()}
    out["key"] = np.asarray(keys, np.int64)
    out["role"] = np.ones(len(rows), np.int8)
    return out


_broadcast: dict = {}  # per worker process: object ref hex -> value (fetched once)


def _get(ref):
    import ray

    key = ref.hex()
    if key not in _broadcast:
        if len(_broadcast) >= 4:
            _broadcast.clear()
        _broadcast[key] = ray.get(ref)
    return _broadcast[key]


class _Scorer:
    """Actor: loads the checkpoint once, then scores one (target, interference) group per call."""

    def __init__(self, checkpoint: str, bounds: bool, device: str):
        from clipsep_ray.models.checkpoint import load_checkpoint

        self.model, self.cfg, _ = load_checkpoint(checkpoint)
        self.model = self.model.to(device).eval()
        self.bounds, self.device = bounds, device

    def __call__(self, group: dict) -> dict:
        """One group = one mixture: the target row (role 0) and its interference row (role 1)."""
        import torch

        roles = np.asarray(group["role"]).tolist()
        if sorted(roles) != [0, 1]:
            raise RuntimeError(f"evaluation mixture {group['key'][0]} has rows of roles {roles}, expected [0, 1]")
        t, i = roles.index(0), roles.index(1)
        targets = {k: np.asarray(v)[[t]] for k, v in group.items()}
        interferers = {k: np.asarray(v)[[i]] for k, v in group.items()}
        with torch.no_grad():
            records = score_mixtures(self.model, self.cfg, targets, interferers, self.device, self.bounds)
        cols = {k: [r[k] for r in records] for k in records[0]}
        out = {k: np.asarray(v, dtype=object) for k, v in cols.items()}
        for k in ("sdr", "sdri", "si_sdr"):
            out[k] = np.asarray([np.nan if v is None else v for v in cols[k]], np.float64)
        out["skipped"] = np.asarray(cols["skipped"], bool)
        return out


def evaluate_distributed(checkpoint: str, data_uri: str, *, limit: int | None = None,
                         text_embeddings: str | None = None, train_data: str = "", actors: int = 2,
                         device: str = "cpu", endpoint: str | None = None,
                         bounds: bool = True) -> EvalResult:
    """Evaluate ``checkpoint`` on the shards at ``data_uri`` with Ray Data (Ray must be initialised:
    ``runtime.init_ray``). ``text_embeddings``: the table to use (None: none)."""
    import ray
    from ray.data.context import ShuffleStrategy

    from clipsep_ray.data.shards import READ_COLUMNS, PrepStats, paths_and_filesystem
    from clipsep_ray.models.checkpoint import read_checkpoint

    t0 = time.time()
    cfg = Config.from_dict(read_checkpoint(checkpoint)["config"])
    endpoint = storage.endpoint_url(endpoint)
    paths, fs = paths_and_filesystem(data_uri, endpoint)
    every = sorted(c for f in schema.list_shards(data_uri, endpoint)
                   for c in schema.read_shard(f, ["clip_id"], endpoint).column("clip_id").to_pylist())
    check_unique_clip_ids(every, data_uri)
    # As the local path: the first `limit` clip ids of ALL rows, then those that are readable.
    allowed_ref = ray.put(set(every[:limit])) if limit is not None else None
    stats = PrepStats()
    columns = READ_COLUMNS + ["label"]
    ds = ray.data.read_parquet(paths, filesystem=fs).select_columns(columns)
    prepared = ds.map_batches(_prep_eval_batch, batch_format="pyarrow",
                              fn_kwargs={"cfg": cfg, "text_uri": text_embeddings, "endpoint": endpoint,
                                         "stats": stats, "allowed": allowed_ref}).materialize()
    meta = prepared.select_columns(list(META_COLUMNS)).take_all()
    meta.sort(key=lambda r: r["clip_id"])
    n = len(meta)
    if n < 2:
        raise ConfigError(f"evaluation needs at least 2 clips, {data_uri} gave {n}")
    pairs = eval_pairs(n, labels=[r["label"] or None for r in meta])  # as the local path does
    ids = [r["clip_id"] for r in meta]
    index = {c: i for i, c in enumerate(ids)}
    users: dict[str, list[int]] = {}
    for t, j in enumerate(pairs):
        users.setdefault(ids[int(j)], []).append(t)
    index_ref, users_ref = ray.put(index), ray.put(users)
    targets = prepared.map_batches(_as_targets, batch_format="numpy", fn_kwargs={"index": index_ref})
    interferers = prepared.map_batches(_as_interferers, batch_format="numpy", fn_kwargs={"users": users_ref})
    pairs_ds = targets.union(interferers)
    # Sort-based grouping (this pipeline's context only): no hash-shuffle actors competing
    # with the scoring actors for a small cluster's CPUs.
    pairs_ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    # The actor pool starts with the pipeline: leave a CPU to the sort's tasks, or they never run.
    cpus = int(ray.available_resources().get("CPU", 1))
    actors, actor_cpus = max(1, min(actors, cpus - 1)), (1 if cpus >= 2 else 0)
    if "://" not in checkpoint:
        checkpoint = os.path.abspath(checkpoint)  # the actors may run in another working directory
    scored = pairs_ds.groupby("key").map_groups(
        _Scorer, batch_format="numpy", fn_constructor_kwargs={"checkpoint": checkpoint, "bounds": bounds,
                                                             "device": device},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_gpus=1 if device.startswith("cuda") else 0, num_cpus=actor_cpus)
    records = []
    for r in scored.iter_rows():
        rec = dict(r)
        for k in ("sdr", "sdri", "si_sdr"):
            rec[k] = None if rec[k] is None or not np.isfinite(rec[k]) else float(rec[k])
        rec["skipped"] = bool(rec["skipped"])
        if rec["label"] == "":
            rec["label"] = None
        records.append(rec)
    summary, per_clip = summarize_records(records, train_data)
    data = stats.snapshot()
    log.info("distributed evaluation of %d mixtures in %.1f s", n, time.time() - t0)
    return EvalResult(summary, per_clip, rows_ok=data["rows_ok"], rows_skipped=data["rows_skipped"],
                      reasons=data["reasons"], engine="ray")
