"""Streaming training rows from shards (Ray Data), and deterministic evaluation rows.

Per row (docs/METHOD.md, "Query conditioning (late fusion)" and "Audio front end"):

* frames are at 1 fps; the query centre ``c`` (1-based, in seconds) is drawn uniformly
  from [4, n - 3] for training (n = the clip's whole seconds of frames; shorter clips use
  the middle range that exists, see :func:`centre_range`) and is ``n // 2`` for evaluation;
* the audio window of ``audio.clip_samples`` is centred at ``(c - 0.5)`` s, zero-padded at
  the clip's edges; a clip shorter than the window is tiled (repeated) to the window;
* the query is the mean of the raw CLIP embeddings of frames c - 1, c, c + 1 (those
  inside the clip; ``query.frames_per_query`` frames in general).

Rows that cannot be prepared (corrupt FLAC, no embeddings, no label where text queries
are asked for) are skipped, never replaced by zeros, and counted in :class:`PrepStats`
(a small Ray actor, safe to update from any Ray Data task). Output columns are numeric
only (``iter_torch_batches`` cannot carry binary columns): ``audio`` (T,) float32,
``image_query`` (D,) float32 (the pooled frame embeddings), ``clip_index`` int64 (a stable
number derived from the clip id), and with text embeddings ``text_query`` (D,) float32 and ``label_id`` int64.
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from clipsep_ray import storage
from clipsep_ray.config import Config
from clipsep_ray.data import schema

log = logging.getLogger(__name__)

READ_COLUMNS = ["clip_id", "source_uri", "audio", "sample_rate", "num_samples", "fps", "image_embeddings",
                "embedding_model"]
SMALL_SET_FILES = 256  # shard sets up to this many files may be repeated per pass or cached
NUMERIC_COLUMNS = ("audio", "image_query", "clip_index", "text_query", "label_id")
_calls = itertools.count()  # per-process: successive epochs draw different centres


# -- statistics ----------------------------------------------------------------------------
class _StatsActor:
    def __init__(self):
        self.ok, self.reasons, self.examples = 0, {}, []

    def add(self, ok: int, failures: list[tuple[str, str, str]]) -> None:
        self.ok += ok
        for clip, source, reason in failures:
            key = reason.split(":", 1)[0]
            self.reasons[key] = self.reasons.get(key, 0) + 1
            if len(self.examples) < 50:
                self.examples.append({"clip_id": clip, "source_uri": source, "reason": reason})

    def summary(self) -> dict:
        return {"rows_ok": self.ok, "rows_skipped": sum(self.reasons.values()), "reasons": dict(self.reasons),
                "examples": list(self.examples)}


class PrepStats:
    """Counts of prepared and skipped rows, shared by every Ray Data task of a dataset.

    Picklable (it holds an actor handle): pass it to training workers to read the counts.
    Without Ray (``local=True``) it is a plain in-process counter.
    """

    def __init__(self, local: bool = False):
        if local:
            self._local, self._actor = _StatsActor(), None
        else:
            import ray

            self._local = None
            # On the driver's node, as Ray Data pins its own SplitCoordinator: a 0-CPU actor may
            # otherwise land on a worker node, and losing that node failed every later row batch
            # (multi-node test, one worker node killed mid-training).
            here = ray.get_runtime_context().get_node_id()
            self._actor = ray.remote(num_cpus=0)(_StatsActor).options(
                label_selector={ray._raylet.RAY_NODE_ID_KEY: here}).remote()

    def add(self, ok: int, failures: list[tuple[str, str, str]]) -> None:
        if self._local is not None:
            self._local.add(ok, failures)
        else:
            import ray

            # Blocking, once per batch: the counts are complete as soon as the data is consumed.
            ray.get(self._actor.add.remote(ok, failures))

    def snapshot(self) -> dict:
        """``{rows_ok, rows_skipped, reasons: {reason: count}, examples: [...]}``."""
        if self._local is not None:
            return self._local.summary()
        import ray

        return ray.get(self._actor.summary.remote())


# -- per-row preparation (plain numpy; used inside Ray Data tasks and locally) ------------------
def centre_range(n_seconds: int) -> tuple[int, int]:
    """Inclusive range of training centres c (1-based seconds) for a clip of ``n_seconds``.

    [4, n - 3] as published (10 s clips: 4..7); shorter clips (< 7 s) fall back to the
    middle of what exists, so the query frames and the window stay inside the clip.
    """
    if n_seconds >= 7:
        return 4, n_seconds - 3
    lo = max(1, min(4, (n_seconds + 1) // 2))
    return lo, max(lo, n_seconds - 3)


def eval_centre(n_seconds: int) -> int:
    return max(1, n_seconds // 2)


def _frame_index(c: int, fps: float, n_frames: int) -> int:
    """Frame (0-based) showing the middle of second c (1-based); c - 1 at 1 fps."""
    return min(n_frames - 1, max(0, int(round((c - 0.5) * fps - 0.5))))


class _EmbeddingView:
    """Row access to a list<list<float32>> column without per-value Python objects."""

    def __init__(self, column):
        arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
        self.valid = arr.is_valid().to_numpy(zero_copy_only=False)
        self.outer = arr.offsets.to_numpy()  # honours slicing; indexes into .values
        inner = arr.values
        self.inner = inner.offsets.to_numpy()
        self.flat = inner.values.to_numpy(zero_copy_only=False)

    def row(self, i: int) -> np.ndarray | None:
        """(n_frames, D) float32, or None when null/empty; ShardError when ragged."""
        if not self.valid[i]:
            return None
        a, b = self.outer[i], self.outer[i + 1]
        if b <= a:
            return None
        lo, hi = self.inner[a], self.inner[b]
        lengths = np.diff(self.inner[a:b + 1])
        if lengths.min() != lengths.max() or lengths[0] == 0:
            raise schema.ShardError(f"ragged image embeddings (lengths {sorted(set(lengths.tolist()))})")
        return self.flat[lo:hi].reshape(b - a, int(lengths[0])).astype(np.float32, copy=False)


@dataclass
class RowPrep:
    """Turns shard rows into (audio window, pooled query) rows for one config."""

    sample_rate: int
    clip_samples: int
    frames_per_query: int = 3
    embed_dim: int | None = None
    text: dict | None = field(default=None, repr=False)  # label -> (D,) text embedding
    labels: dict | None = field(default=None, repr=False)  # label -> label_id (sorted labels)

    @classmethod
    def from_config(cls, cfg: Config, text: dict | None = None, mode: str = "train") -> "RowPrep":
        """Training windows are ``audio.clip_samples``; evaluation windows (``mode="eval"``) are
        at least ``audio.eval_samples`` long (the published 4.08 s)."""
        labels = {lab: i for i, lab in enumerate(cfg.model.labels or sorted(text))} if text else None
        samples = cfg.audio.clip_samples if mode == "train" else max(cfg.audio.clip_samples, cfg.audio.eval_samples)
        return cls(cfg.audio.sample_rate, samples, cfg.query.frames_per_query, cfg.model.embed_dim, text, labels)

    def window(self, data: bytes, sr_cell: int, centre_s: float, num_samples: int | None = None) -> np.ndarray:
        """FLAC cell -> (clip_samples,) float32 at ``sample_rate`` centred at ``centre_s``."""
        T = self.clip_samples
        if sr_cell != self.sample_rate or (num_samples is not None and num_samples < T):
            from clipsep_ray.audio.io import resample

            wave, _ = schema.decode_audio(data)
            wave = np.asarray(resample(wave, sr_cell, self.sample_rate), np.float32)
            return self._crop(wave, centre_s)
        start = int(round(centre_s * self.sample_rate)) - T // 2
        out, _, total = schema.decode_audio_window(data, start, T)
        if total >= T:
            return out
        wave, _ = schema.decode_audio(data)  # short clip: tile it to the window
        return self._crop(wave, centre_s)

    def whole(self, data: bytes, sr_cell: int) -> np.ndarray:
        """FLAC cell -> the whole clip, float32 at ``sample_rate``: what :meth:`window` cuts from
        (``self._crop(whole, centre_s)`` equals ``window(data, sr_cell, centre_s)``)."""
        wave, _ = schema.decode_audio(data)
        if sr_cell != self.sample_rate:
            from clipsep_ray.audio.io import resample

            wave = np.asarray(resample(wave, sr_cell, self.sample_rate), np.float32)
        return wave

    def _crop(self, wave: np.ndarray, centre_s: float) -> np.ndarray:
        T = self.clip_samples
        if len(wave) == 0:
            raise schema.ShardError("empty audio cell")
        if len(wave) < T:
            return np.tile(wave, math.ceil(T / len(wave)))[:T].astype(np.float32, copy=False)
        start = int(round(centre_s * self.sample_rate)) - T // 2
        out = np.zeros(T, np.float32)
        lo, hi = max(0, start), min(len(wave), start + T)
        out[lo - start: hi - start] = wave[lo:hi]
        return out

    def query(self, emb: np.ndarray, c: int, fps: float) -> np.ndarray:
        """Mean of the embeddings of the frames around second c (those inside the clip)."""
        k = self.frames_per_query
        secs = range(c - k // 2, c - k // 2 + k)
        n_seconds = max(1, int(math.floor(len(emb) / fps + 1e-6)))
        idx = sorted({_frame_index(s, fps, len(emb)) for s in secs if 1 <= s <= n_seconds})
        return emb[idx].mean(axis=0)

    def prepare(self, table, mode: str, rng: np.random.Generator | None = None, *, rows=None,
                wholes: list | None = None):
        """A pyarrow table of shard rows -> (dict of numeric numpy columns, failures).

        ``mode``: "train" (random centre per row) or "eval" (c = n // 2). Failures are
        ``(clip_id, source_uri, reason)`` of rows that were skipped. ``rows``: the table's row
        numbers to prepare, in order, repeats allowed (default: every row once). ``wholes``: per
        table row, the clip already decoded by :meth:`whole` (or the ShardError decoding it
        raised); the windows are then cut from it, which gives the same samples.
        """
        n = table.num_rows
        cols = {name: table.column(name) for name in table.column_names}
        ids = cols["clip_id"].to_pylist()
        sources = cols["source_uri"].to_pylist() if "source_uri" in cols else [""] * n
        audio = cols["audio"].to_pylist() if wholes is None else None
        srs = cols["sample_rate"].to_pylist()
        lengths = cols["num_samples"].to_pylist() if "num_samples" in cols else [None] * n
        fps = cols["fps"].to_pylist() if "fps" in cols else [1.0] * n
        labels = cols["label"].to_pylist() if "label" in cols else [None] * n
        emb = _EmbeddingView(cols["image_embeddings"])
        out = {"audio": [], "image_query": [], "clip_index": [], "text_query": [], "label_id": []}
        failures = []
        for i in (range(n) if rows is None else rows):
            try:
                e = emb.row(i)
                if e is None:
                    raise schema.ShardError("no image embeddings (run embed on these shards)")
                n_frames = len(e)
                if self.embed_dim and e.shape[1] != self.embed_dim:
                    raise ValueError(f"shard embeddings have D={e.shape[1]} but model.embed_dim is "
                                     f"{self.embed_dim} (clip {ids[i]} of {sources[i]}); embed with the "
                                     "config's CLIP or set model.embed_dim")
                text_q = label_id = None
                if self.text is not None:
                    if labels[i] is None or labels[i] not in self.text:
                        raise schema.ShardError(f"no text embedding for label {labels[i]!r}")
                    if labels[i] not in self.labels:
                        raise schema.ShardError(f"label {labels[i]!r} is not in the model's vocabulary (model.labels)")
                    text_q, label_id = self.text[labels[i]], self.labels[labels[i]]
                f = float(fps[i] or 1.0)
                n_sec = max(1, int(math.floor(n_frames / f + 1e-6)))
                if mode == "train":
                    lo, hi = centre_range(n_sec)
                    c = int(rng.integers(lo, hi + 1))
                else:
                    c = eval_centre(n_sec)
                if wholes is None:
                    wave = self.window(audio[i], int(srs[i]), c - 0.5, lengths[i])
                elif isinstance(wholes[i], Exception):
                    raise schema.ShardError(str(wholes[i]))
                else:
                    wave = self._crop(wholes[i], c - 0.5)
                q = self.query(e, c, f)
            except (schema.ShardError, IndexError) as exc:
                failures.append((ids[i], sources[i], str(exc)))
                continue
            out["audio"].append(wave)
            out["image_query"].append(q)
            out["clip_index"].append(schema.clip_index(ids[i]))
            if text_q is not None:
                out["text_query"].append(text_q)
                out["label_id"].append(label_id)
        d = self.embed_dim or 0
        res = {
            "audio": np.stack(out["audio"]) if out["audio"] else np.zeros((0, self.clip_samples), np.float32),
            "image_query": np.stack(out["image_query"]).astype(np.float32) if out["image_query"] else np.zeros((0, d), np.float32),
            "clip_index": np.asarray(out["clip_index"], np.int64),
        }
        if self.text is not None:
            res["text_query"] = np.stack(out["text_query"]).astype(np.float32) if out["text_query"] \
                else np.zeros((0, d), np.float32)
            res["label_id"] = np.asarray(out["label_id"], np.int64)
        return res, failures


@functools.lru_cache(maxsize=4)
def cached_text_embeddings(uri: str | None, ensemble: bool, endpoint: str | None):
    """{label: (D,) text embedding} of a text-embeddings table, read once per process (None: None)."""
    if uri is None:
        return None
    from clipsep_ray.data.embed import load_text_embeddings

    return load_text_embeddings(uri, ensemble, endpoint)


def _prep_batch(batch, cfg: Config, mode: str, seed: int, stats: PrepStats | None, text_uri: str | None,
                endpoint: str | None):
    """Ray Data UDF: a pyarrow batch of shard rows -> numeric rows; failures go to ``stats``."""
    prep = RowPrep.from_config(cfg, cached_text_embeddings(text_uri, False, endpoint), mode)
    ids = batch.column("clip_id").to_pylist()
    key = zlib.crc32("".join(ids[:4]).encode())
    rng = np.random.default_rng([seed, key, next(_calls)])
    out, failures = prep.prepare(batch, mode, rng)
    for clip, source, reason in failures[:5]:
        log.warning("skipping clip %s of %s: %s", clip, source, reason)
    if stats is not None:
        stats.add(len(out["clip_index"]), failures)
    return out


def paths_and_filesystem(uri, endpoint: str | None):
    """Shard paths under ``uri`` and their filesystem, as Ray Data's ``read_parquet`` takes them."""
    files = schema.list_shards(uri, endpoint)
    if not files:
        raise FileNotFoundError(f"no shards (*.parquet) under {uri}")
    fs, _ = storage.url_to_fs(files[0], endpoint)
    return [storage.url_to_fs(f, endpoint)[1] for f in files], fs


def count_rows(paths: list[str], fs) -> int:
    """Rows in Parquet files on an fsspec filesystem (footers only, no data)."""
    import pyarrow.parquet as pq

    total = 0
    for path in paths:
        with fs.open(path, "rb") as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def count_shard_rows(uri, endpoint: str | None = None) -> int:
    """Rows of the shards under ``uri`` (Parquet footers only)."""
    return count_rows(*paths_and_filesystem(uri, storage.endpoint_url(endpoint)))


def check_unique_clip_ids(ids, where) -> None:
    """Refuse a test set that holds a clip twice (e.g. a shard copied under a second name)."""
    ids = sorted(ids)
    dupes = sorted({c for a, c in zip(ids, ids[1:]) if a == c})
    if dupes:
        raise ValueError(f"{where}: clip ids are not unique ({len(dupes)} repeated, e.g. {dupes[0]!r}); "
                         "each test clip must appear once")


def _total_bytes(paths: list[str], fs) -> int:
    return sum(fs.size(p) for p in paths)


def split_shards(uri, val_fraction: float = 0.1, seed: int = 0, endpoint: str | None = None) -> tuple[list, list]:
    """Shard URIs -> (train, validation) lists, by a seeded hash of each shard's name (stable
    when shards are added)."""
    files = schema.list_shards(uri, endpoint)
    val = [f for f in files
           if zlib.crc32(f"{seed}:{f.rsplit('/', 1)[-1]}".encode()) / 2 ** 32 < val_fraction]
    train = [f for f in files if f not in set(val)]
    return train, val


def training_dataset(uri, cfg: Config, split_seed: int = 0, *, stats: PrepStats | None = None,
                     text_embeddings: str | None = None, endpoint: str | None = None,
                     prep_batch_size: int | None = None, shuffle_files: bool = True, block_mb: float = 16,
                     min_rows_per_pass: int = 0, prep_cpus: float = 1.0, cache_mb: float = 0,
                     planned_rows: int = 0):
    """Shards (a folder/prefix, one file or a list of URIs) -> a lazy, streaming ``ray.data.Dataset``.

    Only the needed columns are read (not the JPEG frames); every row gets a fresh
    random centre c each time the dataset is iterated. ``split_seed`` seeds the file order
    and the centres. ``stats`` (a :class:`PrepStats`) collects prepared/skipped counts;
    ``text_embeddings`` (an ``_text_embeddings.parquet`` URI or its folder) adds
    ``text_query``/``label_id`` and skips rows without a known label.

    Parallelism: Ray 2.60 packs Parquet row groups into read tasks of about 128 MiB of the
    projected columns (env ``RAY_DATA_PARQUET_BIN_PACKING_BYTES``), ~500 paper rows per
    task; a dataset smaller than (CPUs x 128 MiB) therefore runs on fewer cores.

    ``min_rows_per_pass``: repeat a small set (at most ``SMALL_SET_FILES`` files) by ``union``
    ``ceil(min_rows_per_pass / rows)`` times (rows from the Parquet footers), so one iteration
    covers several epochs, each with fresh random windows: a pass restarts the streaming
    pipeline, too often for a data set of a few hundred clips.

    ``planned_rows`` > 0 with a set that fits ``cache_mb``: one pass of exactly that many
    rows, planned in advance (:func:`planned_dataset`), so the rows, their windows and their
    order depend on ``split_seed`` alone; ``min_rows_per_pass`` and ``shuffle_files`` then
    do not apply.
    """
    import ray
    from ray.data import FileShuffleConfig

    from clipsep_ray.data import idle

    endpoint = storage.endpoint_url(endpoint)
    paths, fs = paths_and_filesystem(uri, endpoint)
    # Listings per pass (Ray Data reads a path given twice only once: repeat by union). Only
    # small sets are inspected: each footer or size is one request, and many shards mean many rows.
    small = len(paths) <= SMALL_SET_FILES
    columns = READ_COLUMNS + (["label"] if text_embeddings else [])
    cached = cache_mb > 0 and small and _total_bytes(paths, fs) <= cache_mb * (1 << 20)
    prep_kwargs = {"cfg": cfg, "mode": "train", "seed": int(split_seed), "stats": stats,
                   "text_uri": text_embeddings, "endpoint": endpoint}
    if cached and planned_rows > 0:
        ds = planned_dataset(uri, columns, planned_rows, prep_kwargs, endpoint=endpoint, block_mb=block_mb,
                             prep_cpus=prep_cpus)
        idle.install(ds.context)
        return ds
    listings = max(1, math.ceil(min_rows_per_pass / max(1, count_rows(paths, fs)))) \
        if min_rows_per_pass > 0 and small else 1
    # The read tasks take the row-preparation tasks' fractional CPUs, not Ray's default of 1: in a
    # sweep on 2 CPUs the trial and its Train workers reserve 1.1 CPUs in placement groups, and
    # 1-CPU read tasks then waited for ever (the CI run of 2026-12-04 hung there).
    ds = ray.data.read_parquet(paths, filesystem=fs, num_cpus=prep_cpus,
                               shuffle=FileShuffleConfig(seed=split_seed) if shuffle_files else None)
    ds = ds.select_columns(columns)  # pushed down into the Parquet read: JPEG frames are never read
    if cached:
        ds = ds.materialize()  # the raw columns, once; the copies below share its blocks
    if listings > 1:
        ds = ds.union(*[ds] * (listings - 1))
    if cached:
        ds = ds.randomize_block_order()
    ds = ds.map_batches(_prep_batch, batch_format="pyarrow", batch_size=prep_batch_size, fn_kwargs=prep_kwargs,
                        num_cpus=prep_cpus)
    # Smaller blocks than Ray's 128 MB default (this pipeline's context only): a paper row is
    # 256 KB of float32, so the first batches arrive sooner and the stages overlap (measured ~1.5x).
    ds.context.target_max_block_size = int(block_mb * (1 << 20))
    idle.install(ds.context)
    return ds


# -- a planned pass: the same rows, windows and order for the same seed ------------------------
@functools.lru_cache(maxsize=8)
def pass_order(seed: int, index: int, rows: int) -> np.ndarray:
    """The row order of pass ``index`` over ``rows`` rows: a seeded permutation."""
    return np.random.default_rng([seed, 2, index]).permutation(rows)


def plan_rows(positions: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """Positions 0, 1, ... of a planned pass -> row numbers: each run of ``rows`` positions
    visits every row once, in the order :func:`pass_order` gives."""
    positions = np.asarray(positions, np.int64)
    out = np.empty_like(positions)
    for p in np.unique(positions // rows):
        sel = positions // rows == p
        out[sel] = pass_order(seed, int(p), rows)[positions[sel] % rows]
    return out


#: The decoded clips of the last planned set this process prepared from: (key, wholes).
_DECODED: list = [None, None]
#: Decode a planned set once per process only up to this many MiB of float32 samples.
DECODED_SET_MB = 256


def _decoded_set(key: str, table, prep: RowPrep) -> list | None:
    """Every clip of a planned set decoded once per process (:meth:`RowPrep.whole`), or None
    (decode each window from FLAC) when that would hold more than :data:`DECODED_SET_MB`.

    Decoding a window per row (open, seek, read) and taking the rows out of the Arrow table
    cost 0.4-0.9 s of CPU per 1,024-row block (0.04 s cut from the decoded clips), 66 blocks in
    the demo's training, all of it taken from the training workers on 2 cores; a clip is used
    ~190 times there.
    """
    key = f"{key}/{prep.sample_rate}"
    if _DECODED[0] == key:
        return _DECODED[1]
    rates = np.maximum(table.column("sample_rate").to_numpy(), 1)
    samples = table.column("num_samples").to_numpy() if "num_samples" in table.column_names else None
    if samples is None or 4 * float(np.sum(samples * (prep.sample_rate / rates))) > DECODED_SET_MB * (1 << 20):
        return None
    wholes: list = []
    for data, sr in zip(table.column("audio").to_pylist(), rates.tolist()):
        try:
            wholes.append(prep.whole(data, int(sr)))
        except schema.ShardError as exc:  # recorded against every row that uses the clip
            wholes.append(exc)
    _DECODED[:] = [key, wholes]
    return wholes


def _planned_batch(batch: dict, table, cfg: Config, mode: str, seed: int, stats: PrepStats | None,
                   text_uri: str | None, endpoint: str | None) -> dict:
    """Ray Data UDF of a planned pass: spans of positions {"start", "stop"} -> prepared rows; the
    windows' random centres are seeded by the block's first position, not by the process."""
    import ray

    ref = table[0]
    table = ray.get(ref)
    positions = np.concatenate([np.arange(a, b) for a, b in zip(batch["start"], batch["stop"])]).astype(np.int64)
    prep = RowPrep.from_config(cfg, cached_text_embeddings(text_uri, False, endpoint), mode)
    out, failures = prep.prepare(table, mode, np.random.default_rng([seed, 3, int(positions[0])]),
                                 rows=plan_rows(positions, table.num_rows, seed).tolist(),
                                 wholes=_decoded_set(ref.hex(), table, prep))
    for clip, source, reason in failures[:5]:
        log.warning("skipping clip %s of %s: %s", clip, source, reason)
    if stats is not None:
        stats.add(len(out["clip_index"]), failures)
    return out


def planned_dataset(uri, columns: list[str], rows: int, prep_kwargs: dict, *, endpoint: str | None = None,
                    block_mb: float = 16, prep_cpus: float = 0.25):
    """A pass of ``rows`` training rows from a small set, decided by the seed alone.

    The shards' columns are read once, sorted by clip id and put in the object store; a pass
    is the positions 0 .. rows - 1, each run of (set size) positions a seeded permutation of
    the set (a shuffled epoch), cut into blocks of about ``block_mb``. Iterated with
    ``preserve_order`` (:func:`ingest_options`), Ray Train's equal split hands the same blocks
    to the same workers on every run, so ``train.seed`` repeats a run. The whole run is one
    pass: no pipeline restarts between epochs.
    """
    import pyarrow as pa
    import ray

    tables = [schema.read_shard(f, columns, endpoint) for f in schema.list_shards(uri, endpoint)]
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise FileNotFoundError(f"no rows in shards under {uri}")
    table = table.take(pa.compute.sort_indices(table, [("clip_id", "ascending")]))
    row_bytes = 4 * (prep_kwargs["cfg"].audio.clip_samples + 2 * (prep_kwargs["cfg"].model.embed_dim or 512))
    per_block = int(min(1024, max(16, block_mb * (1 << 20) // row_bytes)))
    # One item (a range of positions) per block, made in this process: ray.data.range and
    # from_numpy start tasks of a whole CPU each, and in a sweep on 2 CPUs (1.1 reserved in
    # placement groups) such a task waited for ever.
    spans = [{"start": a, "stop": min(a + per_block, rows)} for a in range(0, rows, per_block)]
    ds = ray.data.from_items(spans, override_num_blocks=len(spans))
    ds = ds.map_batches(_planned_batch, batch_format="numpy", batch_size=None, num_cpus=prep_cpus,
                        fn_kwargs={"table": [ray.put(table)], **prep_kwargs})
    ds.context.execution_options.preserve_order = True  # read by ingest_options(): this pass is ordered
    return ds


def ingest_options(ds):
    """Ray Data options of the training pass in Ray Train (which replaces the dataset's own):
    the defaults, and the blocks in order for a planned pass, so that the split repeats."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = bool(ds.context.execution_options.preserve_order)
    return options


def iter_training_batches(ds, batch_size: int, shuffle_buffer: int | None = None, *, device="auto",
                          seed: int | None = None, drop_last: bool = True, prefetch_batches: int = 2):
    """Torch batches {audio (B, T), image_query (B, D), clip_index (B,), ...} from a prepared dataset
    (or a Ray Train ``DataIterator`` shard of it), through a local shuffle buffer."""
    return ds.iter_torch_batches(batch_size=batch_size, local_shuffle_buffer_size=shuffle_buffer or None,
                                 local_shuffle_seed=seed, drop_last=drop_last, device=device,
                                 prefetch_batches=prefetch_batches)


def kept_columns(table, failures, names) -> dict[str, list]:
    """The ``names`` columns (None where absent) of the rows :meth:`RowPrep.prepare` kept, in order:
    the rows whose clip id is not among ``failures``."""
    bad = {f[0] for f in failures}
    kept = [i for i, c in enumerate(table.column("clip_id").to_pylist()) if c not in bad]
    out = {}
    for name in names:
        col = table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows
        out[name] = [col[i] for i in kept]
    return out


def eval_rows(uri, cfg: Config, *, limit: int | None = None, text_embeddings: str | None = None,
              ensemble: bool = True, endpoint: str | None = None) -> dict:
    """Deterministic validation/test rows, read locally (no Ray): c = n // 2, no randomness.

    Rows are sorted by clip id (``limit`` keeps the first ones). Returns numpy arrays
    ``audio`` (M, T), ``image_query`` (M, D), ``clip_index`` (M,), lists ``clip_id``,
    ``source_uri``, ``label``, and ``skipped``/``failures``; with ``text_embeddings``
    also ``text_query`` (M, D) (the prompt-ensemble mean unless ``ensemble=False``) and
    ``label_id``; rows without a known label are then skipped.
    """
    import pyarrow as pa

    endpoint = storage.endpoint_url(endpoint)
    files = schema.list_shards(uri, endpoint)
    columns = READ_COLUMNS + ["label"]
    tables = [schema.read_shard(f, columns, endpoint) for f in files]
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        raise FileNotFoundError(f"no rows in shards under {uri}")
    table = table.take(pa.compute.sort_indices(table, [("clip_id", "ascending")]))
    check_unique_clip_ids(table.column("clip_id").to_pylist(), uri)
    if limit is not None:
        table = table.slice(0, limit)
    text = cached_text_embeddings(text_embeddings, ensemble, endpoint) if text_embeddings else None
    prep = RowPrep.from_config(cfg, text, "eval")
    out, failures = prep.prepare(table, "eval")
    out.update(kept_columns(table, failures, ("clip_id", "source_uri", "label")))
    out["skipped"] = len(failures)
    out["failures"] = [{"clip_id": c, "source_uri": s, "reason": r} for c, s, r in failures]
    return out
