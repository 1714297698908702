"""The shard schema (one row per clip): columns, audio cells, reading and writing shards.

A shard is a Parquet file on any fsspec URI (a local folder, ``s3://``, ...). Columns:

=================  ========================  ===============================================
clip_id            string                    sha1 of ``source_uri#start_s`` (stable)
source_uri         string                    the video the clip was cut from
start_s            float64                   clip start inside the video, seconds
audio              binary                    FLAC bytes, mono, 16-bit
sample_rate        int32                     of ``audio``
num_samples        int64                     of ``audio``
frames             list<binary>              JPEG frames (224x224) at ``fps``
fps                float32                   frame rate of ``frames`` (1.0)
label              string, nullable          metadata only; unlabeled training never reads it
image_embeddings   list<list<float32>>, null n_frames x D raw CLIP image embeddings (``embed``)
embedding_model    string, nullable          which CLIP made them (``QueryEncoder.name``)
=================  ========================  ===============================================

URIs, filesystems and atomic writes live in :mod:`clipsep_ray.storage`.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from clipsep_ray.storage import normalize_uri, to_uri, url_to_fs, write_bytes

SHARD_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("audio", pa.binary(), nullable=False),
    pa.field("sample_rate", pa.int32(), nullable=False),
    pa.field("num_samples", pa.int64(), nullable=False),
    pa.field("frames", pa.list_(pa.binary()), nullable=False),
    pa.field("fps", pa.float32(), nullable=False),
    pa.field("label", pa.string(), nullable=True),
    pa.field("image_embeddings", pa.list_(pa.list_(pa.float32())), nullable=True),
    pa.field("embedding_model", pa.string(), nullable=True),
])
COLUMNS = tuple(SHARD_SCHEMA.names)

ERRORS_SCHEMA = pa.schema([pa.field("path", pa.string()), pa.field("reason", pa.string())])

MANIFEST_NAME = "_manifest.json"
ERRORS_NAME = "_errors.parquet"
TEXT_EMBEDDINGS_NAME = "_text_embeddings.parquet"
EMBED_MANIFEST_NAME = "_embed_manifest.json"


def text_embeddings_uri(data_uri, explicit: str | None = None, endpoint: str | None = None) -> str | None:
    """The text-embeddings table of a shard set: ``explicit`` when given, else
    ``<data_uri>/_text_embeddings.parquet``; None when that file does not exist.

    ``data_uri`` may be a list of shard URIs (their folder is the first one's)."""
    from clipsep_ray.storage import exists, join_uri

    if explicit:
        return explicit
    base = data_uri[0].rsplit("/", 1)[0] if isinstance(data_uri, (list, tuple)) else data_uri
    uri = join_uri(base, TEXT_EMBEDDINGS_NAME)
    return uri if exists(uri, endpoint) else None


class ShardError(ValueError):
    """A shard that does not follow the schema or cannot be read; the message names it."""


# -- identifiers ---------------------------------------------------------------------
def clip_id(source_uri: str, start_s: float) -> str:
    """Stable id of the clip starting at ``start_s`` (ms precision) in ``source_uri``.

    ``source_uri`` is the video's URI, or the ``clip_id`` an index CSV gives it (which keeps
    ids the same wherever the data set is stored).
    """
    return hashlib.sha1(f"{source_uri}#{start_s:.3f}".encode("utf-8")).hexdigest()


def clip_index(clip_id_: str) -> int:
    """A non-negative int64 derived from a clip id (for numeric-only training batches)."""
    return int(clip_id_[:15], 16)


# -- audio cells -----------------------------------------------------------------------
def encode_audio(wave, sample_rate: int) -> bytes:
    """Mono float ``(T,)`` in [-1, 1] -> FLAC bytes (16-bit; values outside [-1, 1] are clipped)."""
    arr = np.clip(np.asarray(wave, dtype=np.float32).reshape(-1), -1.0, 1.0)
    if arr.size == 0:
        raise ValueError("cannot encode an empty audio clip")
    buf = io.BytesIO()
    sf.write(buf, arr, int(sample_rate), format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC bytes -> (mono float32 ``(T,)``, sample_rate). Raises ShardError on corrupt bytes."""
    try:
        wave, sr = sf.read(io.BytesIO(bytes(data)), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for garbage
        raise ShardError(f"corrupt audio cell ({len(data)} bytes): {exc}") from exc
    if wave.shape[0] == 0:
        raise ShardError("empty audio cell")
    return (wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]).astype(np.float32, copy=False), int(sr)


def decode_audio_window(data: bytes, start: int, length: int) -> tuple[np.ndarray, int, int]:
    """Read ``length`` samples from sample ``start`` (may be negative / run past the end).

    Returns ``(wave (length,), sample_rate, total_samples)``; outside the clip is zero.
    Only the needed FLAC frames are decoded (libsndfile seeks).
    """
    try:
        with sf.SoundFile(io.BytesIO(bytes(data))) as f:
            total, sr = f.frames, f.samplerate
            out = np.zeros(length, np.float32)
            lo, hi = max(0, start), min(total, start + length)
            if hi > lo:
                f.seek(lo)
                got = f.read(hi - lo, dtype="float32", always_2d=True)
                got = got.mean(axis=1) if got.shape[1] > 1 else got[:, 0]
                out[lo - start: lo - start + len(got)] = got
    except Exception as exc:
        raise ShardError(f"corrupt audio cell ({len(data)} bytes): {exc}") from exc
    if total <= 0:
        raise ShardError("empty audio cell")
    return out, int(sr), int(total)


# -- shards ----------------------------------------------------------------------------
def empty_table() -> pa.Table:
    return SHARD_SCHEMA.empty_table()


def conform(table: pa.Table, where: str = "table") -> pa.Table:
    """Select and cast ``table``'s columns to :data:`SHARD_SCHEMA` (missing nullable ones become null)."""
    cols = []
    for field in SHARD_SCHEMA:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ShardError(f"{where}: column '{field.name}' is {col.type}, expected {field.type}") from exc
        elif field.nullable:
            col = pa.nulls(table.num_rows, field.type)
        else:
            raise ShardError(f"{where}: missing column '{field.name}' (shard columns: {', '.join(COLUMNS)})")
        if not field.nullable and col.null_count:
            raise ShardError(f"{where}: column '{field.name}' has {col.null_count} null value(s)")
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=SHARD_SCHEMA)


def table_to_bytes(table: pa.Table, where: str = "table") -> bytes:
    """A shard as Parquet bytes: FLAC/JPEG cells stored as they are, the rest zstd."""
    table = conform(table, where)
    buf = io.BytesIO()
    compression = {name: ("NONE" if name in ("audio", "frames") else "ZSTD") for name in COLUMNS}
    # Small row groups keep streaming readers' memory bounded (a clip is ~0.1-0.5 MB).
    pq.write_table(table, buf, compression=compression, row_group_size=64,
                   use_dictionary=["clip_id", "source_uri", "label", "embedding_model"])
    return buf.getvalue()


def write_shard(table: pa.Table, uri: str, endpoint: str | None = None) -> int:
    """Write ``table`` (conformed to the schema) as one Parquet shard at ``uri``; returns bytes written.

    The write replaces any existing file atomically (temp + rename locally; a single
    object upload on S3), so re-running a stage overwrites instead of appending.
    """
    data = table_to_bytes(table, uri)
    write_bytes(uri, data, endpoint)
    return len(data)


def read_shard(uri: str, columns: list[str] | None = None, endpoint: str | None = None) -> pa.Table:
    """Read one shard (optionally a subset of columns)."""
    fs, path = url_to_fs(uri, endpoint)
    try:
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh, columns=columns)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ShardError(f"cannot read shard {uri}: {exc}") from exc
    return table if columns is not None else conform(table, uri)


def list_shards(uri: str, endpoint: str | None = None) -> list[str]:
    """Shard URIs under a folder/prefix (``*.parquet``, skipping ``_``/``.`` names), sorted.

    A single ``.parquet`` URI or a list of URIs is returned as given (normalised).
    """
    if isinstance(uri, (list, tuple)):
        return [normalize_uri(u) for u in uri]
    uri = normalize_uri(uri)
    fs, path = url_to_fs(uri, endpoint)
    if uri.endswith(".parquet") and fs.isfile(path):
        return [uri]
    if not fs.exists(path):
        raise FileNotFoundError(f"no shards: {uri} does not exist")
    out = []
    for p in fs.find(path):
        name = p.rsplit("/", 1)[-1]
        if name.endswith(".parquet") and not name.startswith(("_", ".")):
            out.append(to_uri(fs, p))
    return sorted(out)
