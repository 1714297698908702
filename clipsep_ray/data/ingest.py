"""Video files -> Parquet shards (schema.SHARD_SCHEMA), as a Ray Data job.

Flow: list the inputs (a local folder, an ``s3://`` prefix, one video, or an index CSV
``path[,label][,clip_id][,...]``) -> deterministic groups of files -> one Ray Data task per group
decodes each file with PyAV (audio streamed and resampled to ``audio.sample_rate`` mono;
one frame per second, short side 224 bicubic, centre crop 224x224, JPEG) -> clips of
``clip_seconds`` (a final remainder shorter than ``min_clip_seconds`` is dropped) ->
shards bounded by rows and bytes -> ``_errors.parquet`` (path, reason) and
``_manifest.json`` in the output folder.

Frame ``k`` (0-based) of a clip is the video frame nearest to ``start_s + (k + 0.5) / fps``:
with 1 fps, frame c (1-based) shows the middle of second c, which is where the training
window is centred ((c - 0.5) s; docs/METHOD.md).

Re-running never duplicates clips: clip ids and shard names are derived from the input
files (shard ``part-<sha1 of the group's files>-<nnn>.parquet``), files already listed in
the manifest are skipped (``--overwrite`` re-ingests them, replacing their shards), and
part files that no manifest references (a crashed run) are removed.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from clipsep_ray import storage
from clipsep_ray.data import schema
from clipsep_ray.runtime import init_ray

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi")
_PART_RE = re.compile(r"^part-[0-9a-f]{16}-\d{3}\.parquet$")


class IngestError(ValueError):
    """A problem with the whole job (bad input URI, incompatible existing output)."""


class Reject(Exception):
    """One input file cannot become clips; ``reason`` says why (goes to _errors.parquet)."""


@dataclass
class IngestOptions:
    """What a clip is and how shards are cut. The first six fields define the data and are
    checked against an existing manifest (mixing them in one output would be wrong)."""

    sample_rate: int = 16000
    clip_seconds: float = 10.0
    min_clip_seconds: float | None = None  # None: min(8 s, clip_seconds)
    fps: float = 1.0
    frame_size: int = 224
    jpeg_quality: int = 90
    max_rows_per_shard: int = 1000
    max_bytes_per_shard: int = 256 << 20
    files_per_task: int = 32
    bytes_per_task: int = 2 << 30  # of input video per Ray task

    def __post_init__(self):
        if self.min_clip_seconds is None:
            self.min_clip_seconds = min(8.0, float(self.clip_seconds))
        if self.clip_seconds <= 0 or self.fps <= 0 or self.clip_seconds * self.fps < 1:
            raise IngestError(f"clip_seconds ({self.clip_seconds}) x fps ({self.fps}) must give at least one frame")
        if not 0 < self.min_clip_seconds <= self.clip_seconds:
            raise IngestError(f"min_clip_seconds must be in (0, clip_seconds], got {self.min_clip_seconds}")

    def data_key(self) -> dict:
        return {k: getattr(self, k) for k in ("sample_rate", "clip_seconds", "min_clip_seconds", "fps",
                                              "frame_size", "jpeg_quality")}


# -- listing -----------------------------------------------------------------------------
def _is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def _resolve_relative(base_dir_uri: str, path: str) -> str:
    if "://" in path or os.path.isabs(path):
        return storage.normalize_uri(path)
    if "://" in base_dir_uri:
        return base_dir_uri.rstrip("/") + "/" + path.replace(os.sep, "/")
    return os.path.normpath(os.path.join(base_dir_uri, path))


def read_index(index_uri: str, endpoint: str | None = None) -> list[dict]:
    """An index CSV (header with ``path``, optionally ``label`` and ``clip_id``) -> [{path, label, id_key}].

    Relative paths are resolved against the CSV's own folder. A ``clip_id`` column names
    each video independently of where it is stored: clip ids are then derived from it
    instead of the file's URI, so the same data set ingested from another folder or bucket
    gets the same clip ids (and the same evaluation pairs). Ids must be unique.
    """
    index_uri = storage.normalize_uri(index_uri)
    text = storage.read_bytes(index_uri, endpoint).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "path" not in reader.fieldnames:
        raise IngestError(f"index {index_uri}: needs a header with a 'path' column, got {reader.fieldnames}")
    base = index_uri.rsplit("/", 1)[0]
    out, seen_ids = [], {}
    for i, row in enumerate(reader, start=2):
        path = (row.get("path") or "").strip()
        if not path:
            raise IngestError(f"index {index_uri}, line {i}: empty path")
        label = (row.get("label") or "").strip() or None
        id_key = (row.get("clip_id") or "").strip() or None
        if id_key is not None:
            if id_key in seen_ids:
                raise IngestError(f"index {index_uri}, line {i}: clip_id '{id_key}' repeats line {seen_ids[id_key]}")
            seen_ids[id_key] = i
        out.append({"path": _resolve_relative(base, path), "label": label, "id_key": id_key})
    return out


def list_inputs(input_uri: str | None, index: str | None = None, endpoint: str | None = None) -> list[dict]:
    """Input videos as [{path, label, size}], sorted by path and de-duplicated.

    ``index`` (or an ``input_uri`` ending in .csv) lists the files; otherwise every video
    (mp4, m4v, mkv, webm, mov, avi) under the folder/prefix, or the one file named.
    A missing file from an index gets size -1 (it is rejected, not fatal).
    """
    if index is None and input_uri and input_uri.lower().endswith(".csv"):
        index = input_uri
    if index is not None:
        entries = read_index(index, endpoint)
    else:
        if not input_uri:
            raise IngestError("give an INPUT_URI (folder, prefix, video or index CSV) or --index")
        uri = storage.normalize_uri(input_uri)
        fs, path = storage.url_to_fs(uri, endpoint)
        if not fs.exists(path):
            raise IngestError(f"input {uri} does not exist")
        if fs.isfile(path):
            entries = [{"path": uri, "label": None}]
        else:
            entries = [{"path": storage.to_uri(fs, p), "label": None} for p in fs.find(path) if _is_video(p)]
    seen, out = set(), []
    for e in sorted(entries, key=lambda e: e["path"]):
        if e["path"] in seen:
            continue
        seen.add(e["path"])
        fs, path = storage.url_to_fs(e["path"], endpoint)
        try:
            size = int(fs.size(path))
        except (FileNotFoundError, OSError):
            size = -1
        out.append({**e, "size": size})
    return out


def plan_groups(files: list[dict], opts: IngestOptions) -> list[dict]:
    """Consecutive (sorted) files -> groups bounded by count and bytes; the key hashes the paths."""
    groups, cur, cur_bytes = [], [], 0
    for f in files:
        size = max(f["size"], 0)
        if cur and (len(cur) >= opts.files_per_task or cur_bytes + size > opts.bytes_per_task):
            groups.append(cur)
            cur, cur_bytes = [], 0
        cur.append(f)
        cur_bytes += size
    if cur:
        groups.append(cur)
    return [{"key": hashlib.sha1("\n".join(f["path"] for f in g).encode("utf-8")).hexdigest()[:16],
             "files": json.dumps(g)} for g in groups]


# -- decoding -----------------------------------------------------------------------------
def _decode_audio(local_path: str, sr: int) -> np.ndarray:
    from clipsep_ray.audio.io import AudioDecodeError, AudioReader, StreamingResampler

    try:
        with AudioReader(local_path) as reader:
            rs = StreamingResampler(reader.sample_rate, sr)
            parts = [rs.push(b) for b in reader.blocks(1 << 18)]
            parts.append(rs.flush())
    except AudioDecodeError as exc:
        raise Reject(f"audio: {exc.reason}") from None
    return np.concatenate(parts).astype(np.float32, copy=False)


def _frame_jpeg(frame, size: int, quality: int) -> bytes:
    from PIL import Image

    img = frame.to_image()
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _decode_frames(container, targets: list[float], opts: IngestOptions) -> tuple[list[bytes | None], float]:
    """JPEG of the frame nearest to each (sorted) target time; None past the video's end.

    Returns (jpegs, video_end_seconds).
    """
    import av

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    out: list[bytes | None] = [None] * len(targets)
    cache: dict[int, bytes] = {}
    prev, prev_t, idx, j = None, None, -1, 0
    rate = float(stream.average_rate) if stream.average_rate else 25.0
    last_dur = 1.0 / rate

    def jpeg(frame, key):
        if key not in cache:
            cache[key] = _frame_jpeg(frame, opts.frame_size, opts.jpeg_quality)
        return cache[key]

    try:
        for frame in container.decode(stream):
            idx += 1
            t = frame.time if frame.time is not None else idx / rate
            if getattr(frame, "duration", None) and frame.time_base:
                last_dur = float(frame.duration * frame.time_base)
            while j < len(targets) and targets[j] <= t:
                use_prev = prev is not None and (targets[j] - prev_t) <= (t - targets[j])
                out[j] = jpeg(prev, idx - 1) if use_prev else jpeg(frame, idx)
                j += 1
            if j < len(targets):
                cache.pop(idx - 2, None)
            prev, prev_t = frame, t
            if j >= len(targets):  # every target has its frame: the video covers them all
                return out, math.inf
    except av.FFmpegError as exc:
        if prev is None:
            raise Reject(f"video: corrupt or unreadable: {exc}") from None
        # A truncated tail: keep what decoded, the clip layout below trims to it.
    if prev is None:
        raise Reject("video: no frames could be decoded")
    end = prev_t + last_dur
    while j < len(targets) and targets[j] < end:
        out[j] = jpeg(prev, idx)
        j += 1
    return out, end


def extract_clips(local_path: str, source_uri: str, label: str | None, opts: IngestOptions,
                  id_key: str | None = None) -> tuple[list[dict], float]:
    """Decode one video into shard rows; raise :class:`Reject` with a readable reason.

    Returns (rows, decoded_seconds).
    """
    import av

    if os.path.getsize(local_path) == 0:
        raise Reject("empty file (0 bytes)")
    try:
        container = av.open(local_path, mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise Reject(f"corrupt or unreadable container: {exc}") from None
    try:
        if not container.streams.video:
            raise Reject("no video track")
        if not container.streams.audio:
            raise Reject("no audio track")
        audio = _decode_audio(local_path, opts.sample_rate)
        dur_audio = len(audio) / opts.sample_rate
        if dur_audio + 1e-6 < opts.min_clip_seconds:
            raise Reject(f"too short: audio lasts {dur_audio:.2f} s, a clip needs at least {opts.min_clip_seconds:g} s")
        L, fps = float(opts.clip_seconds), float(opts.fps)
        starts = [i * L for i in range(int(math.ceil(dur_audio / L - 1e-9)))]
        targets = [s + (k + 0.5) / fps for s in starts for k in range(int(math.floor(min(L, dur_audio - s) * fps + 1e-6)))]
        jpegs, video_end = _decode_frames(container, targets, opts)
    finally:
        container.close()
    duration = min(dur_audio, video_end)
    if duration + 1e-6 < opts.min_clip_seconds:
        raise Reject(f"too short: {duration:.2f} s of audio and video, a clip needs at least {opts.min_clip_seconds:g} s")
    frame_at = dict(zip(targets, jpegs))
    rows = []
    for s in starts:
        length = min(L, duration - s)
        if length + 1e-6 < opts.min_clip_seconds:
            continue
        n_frames = int(math.floor(length * fps + 1e-6))
        frames = [frame_at.get(s + (k + 0.5) / fps) for k in range(n_frames)]
        if not frames or any(f is None for f in frames):
            continue
        a0 = int(round(s * opts.sample_rate))
        seg = audio[a0: a0 + int(round(length * opts.sample_rate))]
        rows.append({
            "clip_id": schema.clip_id(id_key or source_uri, s), "source_uri": source_uri, "start_s": float(s),
            "audio": schema.encode_audio(seg, opts.sample_rate), "sample_rate": opts.sample_rate,
            "num_samples": len(seg), "frames": frames, "fps": fps, "label": label,
            "image_embeddings": None, "embedding_model": None,
        })
    if not rows:
        raise Reject(f"too short: no complete clip of at least {opts.min_clip_seconds:g} s with frames")
    return rows, duration


def _ingest_file(f: dict, opts: IngestOptions, endpoint: str | None, tmpdir: str) -> tuple[list[dict], float]:
    uri = f["path"]
    if f["size"] < 0:
        raise Reject("not found")
    if "://" not in uri:
        if not os.path.exists(uri):
            raise Reject("not found")
        return extract_clips(uri, uri, f["label"], opts, f.get("id_key"))
    fs, path = storage.url_to_fs(uri, endpoint)
    local = os.path.join(tmpdir, "input" + os.path.splitext(path)[1])
    try:
        fs.get_file(path, local)
    except FileNotFoundError:
        raise Reject("not found") from None
    except Exception as exc:
        raise Reject(f"cannot download: {type(exc).__name__}: {exc}") from None
    try:
        return extract_clips(local, uri, f["label"], opts, f.get("id_key"))
    finally:
        os.remove(local)


def ingest_group(batch: dict, output_uri: str, opts: dict, endpoint: str | None) -> dict:
    """Ray Data UDF: one row per group in, one row per input file out (status and shards)."""
    opts_ = IngestOptions(**opts)
    out = {k: [] for k in ("path", "label", "ok", "reason", "clips", "seconds", "shards", "shard_bytes")}
    for key, files_json in zip(batch["key"], batch["files"]):
        files = json.loads(files_json)
        pending, pending_bytes, part = [], 0, 0
        file_shards: dict[str, dict[str, int]] = {}
        shard_bytes: dict[str, int] = {}

        def flush():
            nonlocal pending, pending_bytes, part
            if not pending:
                return
            import pyarrow as pa

            name = f"part-{key}-{part:03d}.parquet"
            table = pa.Table.from_pylist(pending, schema=schema.SHARD_SCHEMA)
            shard_bytes[name] = schema.write_shard(table, storage.join_uri(output_uri, name), endpoint)
            for r in pending:
                d = file_shards.setdefault(r["source_uri"], {})
                d[name] = d.get(name, 0) + 1
            pending, pending_bytes, part = [], 0, part + 1

        results = []
        with tempfile.TemporaryDirectory(prefix="clipsep-ingest-") as tmpdir:
            for f in files:
                try:
                    rows, seconds = _ingest_file(f, opts_, endpoint, tmpdir)
                except Reject as exc:
                    results.append((f, False, str(exc), 0, 0.0))
                    continue
                except Exception as exc:  # anything else about one file must not stop the job
                    results.append((f, False, f"unreadable: {type(exc).__name__}: {exc}", 0, 0.0))
                    continue
                for r in rows:
                    pending.append(r)
                    pending_bytes += len(r["audio"]) + sum(len(x) for x in r["frames"])
                    if len(pending) >= opts_.max_rows_per_shard or pending_bytes >= opts_.max_bytes_per_shard:
                        flush()
                results.append((f, True, "", len(rows), seconds))
            flush()
        for f, ok, reason, n, seconds in results:
            out["path"].append(f["path"])
            out["label"].append(f["label"])
            out["ok"].append(ok)
            out["reason"].append(reason)
            out["clips"].append(n)
            out["seconds"].append(seconds)
            shards = file_shards.get(f["path"], {})
            out["shards"].append(json.dumps(shards))
            out["shard_bytes"].append(json.dumps({s: shard_bytes[s] for s in shards}))
    return out


# -- the job -----------------------------------------------------------------------------
def _load_manifest(output_uri: str, endpoint: str | None) -> dict | None:
    uri = storage.join_uri(output_uri, schema.MANIFEST_NAME)
    try:
        return json.loads(storage.read_bytes(uri, endpoint))
    except FileNotFoundError:
        return None


def _remove(uris: list[str], endpoint: str | None) -> None:
    for u in uris:
        fs, path = storage.url_to_fs(u, endpoint)
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass


def ingest(input_uri: str | None, output_uri: str, opts: IngestOptions | None = None, index: str | None = None,
           overwrite: bool = False, endpoint: str | None = None, address: str | None = None) -> dict:
    """Run the ingest job; returns the counts (also written to ``OUTPUT_URI/_manifest.json``).

    ``{clips_written, clips_total, files_ok, files_rejected, files_skipped, video_seconds,
    wall_s, shards, errors: [{path, reason}], output_uri}``.
    """
    import pyarrow as pa
    import ray

    opts = opts or IngestOptions()
    endpoint = storage.endpoint_url(endpoint)
    output_uri = storage.normalize_uri(output_uri)
    t0 = time.perf_counter()
    files = list_inputs(input_uri, index, endpoint)
    if not files:
        raise IngestError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) found in {index or input_uri}")

    old = None if overwrite else _load_manifest(output_uri, endpoint)
    if old is not None and old.get("options") != opts.data_key():
        raise IngestError(f"{output_uri} holds clips made with {old.get('options')}, not {opts.data_key()}; "
                          "use another output or --overwrite")
    done: dict = dict(old["files"]) if old else {}
    todo = [f for f in files if f["path"] not in done]
    skipped = len(files) - len(todo)

    out_fs, out_path = storage.url_to_fs(output_uri, endpoint)
    if storage.is_local(out_fs):
        os.makedirs(out_path, exist_ok=True)
    if overwrite:  # replace what a previous run wrote for these files
        prev = _load_manifest(output_uri, endpoint) or {}
        _remove([storage.join_uri(output_uri, s) for s in prev.get("shards", {})], endpoint)

    rows: list[dict] = []
    if todo:
        init_ray(address)
        groups = plan_groups(todo, opts)
        ds = ray.data.from_items(groups, override_num_blocks=len(groups))
        ds = ds.map_batches(ingest_group, batch_size=1, num_cpus=1,
                            fn_kwargs={"output_uri": output_uri, "opts": asdict(opts), "endpoint": endpoint})
        rows = ds.take_all()

    shards = dict(old.get("shards", {})) if old else {}
    errors, clips_written, files_ok, seconds = [], 0, 0, 0.0
    for r in sorted(rows, key=lambda r: r["path"]):
        if r["ok"]:
            files_ok += 1
            clips_written += int(r["clips"])
            seconds += float(r["seconds"])
            file_shards = json.loads(r["shards"])
            done[r["path"]] = {"clips": int(r["clips"]), "seconds": float(r["seconds"]), "shards": file_shards}
            for name, size in json.loads(r["shard_bytes"]).items():
                entry = shards.setdefault(name, {"rows": 0, "bytes": size})
                entry["rows"] += file_shards[name]
                entry["bytes"] = size
        else:
            errors.append({"path": r["path"], "reason": r["reason"]})

    # Part files no manifest references come from a crashed run: they would duplicate clips.
    orphans = [storage.to_uri(out_fs, p) for p in out_fs.find(out_path)
               if _PART_RE.match(p.rsplit("/", 1)[-1]) and p.rsplit("/", 1)[-1] not in shards]
    _remove(orphans, endpoint)

    err_table = pa.Table.from_pylist(errors, schema=schema.ERRORS_SCHEMA)
    buf = io.BytesIO()
    import pyarrow.parquet as pq

    pq.write_table(err_table, buf)
    storage.write_bytes(storage.join_uri(output_uri, schema.ERRORS_NAME), buf.getvalue(), endpoint)

    wall = time.perf_counter() - t0
    result = {
        "output_uri": output_uri,
        "clips_written": clips_written,
        "clips_total": sum(v["clips"] for v in done.values()),
        "files_ok": files_ok,
        "files_rejected": len(errors),
        "files_skipped": skipped,
        "video_seconds": round(seconds, 3),
        "wall_s": round(wall, 3),
        "shards": sorted(shards),
        "orphans_removed": len(orphans),
        "errors": errors,
    }
    manifest = {"format": "clipsep_ray.shards/1", "input": index or input_uri, "options": opts.data_key(),
                "files": done, "shards": shards, "last_run": {k: v for k, v in result.items() if k != "shards"}}
    storage.write_bytes(storage.join_uri(output_uri, schema.MANIFEST_NAME),
                       json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"), endpoint)
    return result
