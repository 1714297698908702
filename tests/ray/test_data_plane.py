"""The data plane on a local Ray cluster: ingest (local folder and S3), embed, streaming
rows, mixing, shard round trips and skipped rows. One Ray init for the module.

Videos are made here with PyAV (4 fps, 64x48, AAC); clips are 2 s at 8 kHz so the
whole module stays small.
"""
from __future__ import annotations

import json
import os

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from clipsep_ray.config import load_config
from clipsep_ray import storage
from clipsep_ray.data import schema
from clipsep_ray.commands import call
from clipsep_ray.data.embed import load_text_embeddings
from clipsep_ray.data.ingest import IngestError, IngestOptions, ingest, read_index
from clipsep_ray.data.mixing import mix_batch
from clipsep_ray.data.shards import (PrepStats, RowPrep, eval_rows, iter_training_batches, split_shards,
                                     training_dataset)

SR = 8000
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
NAME_WITH_SPACES = "good b \u00fc\u00df \u732b.mp4"  # spaces and non-ASCII
# file -> (clips, or the start of the rejection reason); clip 2 s, min 2 s
EXPECTED = {
    "good_a.mp4": 2,  # 5 s: two clips, the 1 s remainder is dropped
    NAME_WITH_SPACES: 2,  # 4.2 s
    "sub/good_c.mov": 1,  # 3 s, in a sub-folder, another container
    "noaudio.mp4": "no audio track",
    "corrupt.mp4": "corrupt or unreadable",
    "empty.mp4": "empty file",
    "short.mp4": "too short",
}
N_CLIPS = sum(v for v in EXPECTED.values() if isinstance(v, int))
N_OK = sum(isinstance(v, int) for v in EXPECTED.values())
N_BAD = len(EXPECTED) - N_OK


def make_video(path, seconds, freq=440.0, fps=4, size=(64, 48), sr=16000, audio=True):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    c = av.open(str(path), "w")
    vs = c.add_stream("mpeg4", rate=fps)
    vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
    a = c.add_stream("aac", rate=sr) if audio else None
    if a is not None:
        a.layout = "mono"
    for i in range(int(round(seconds * fps))):
        img = np.full((size[1], size[0], 3), (i * 20) % 255, np.uint8)
        for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in vs.encode():
        c.mux(p)
    if a is not None:
        n = int(seconds * sr)
        wav = (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)
        for i in range(0, n, 1024):
            fr = av.AudioFrame.from_ndarray(wav[None, i:i + 1024], format="flt", layout="mono")
            fr.sample_rate, fr.pts = sr, i
            for p in a.encode(fr):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    c.close()


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    make_video(d / "good_a.mp4", 5.0, 440.0)
    make_video(d / NAME_WITH_SPACES, 4.2, 660.0)
    make_video(d / "sub" / "good_c.mov", 3.0, 880.0)
    make_video(d / "noaudio.mp4", 3.0, audio=False)
    make_video(d / "short.mp4", 1.2)
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.txt").write_text("not a video")
    return d


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clipcfg")
    (d / "test-data-clip.json").write_text(json.dumps(TINY_CLIP))
    return str(d)


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", ["model.embed_dim=32"])


def _opts(**kw):
    return IngestOptions(sample_rate=SR, clip_seconds=2.0, files_per_task=3, **kw)


def _rows(uri):
    tables = [schema.read_shard(u) for u in schema.list_shards(uri)]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _check_result(res, root):
    assert res["clips_written"] == N_CLIPS
    assert res["files_ok"] == N_OK
    assert res["files_rejected"] == N_BAD
    reasons = {e["path"][len(root) + 1:]: e["reason"] for e in res["errors"]}
    for name, want in EXPECTED.items():
        if isinstance(want, str):
            assert reasons[name].startswith(want), (name, reasons[name])


# -- ingest -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_shards(ray_local, video_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shards"))
    argv = [str(video_dir), out, "--config", "tiny", "--clip-seconds", "2", "--files-per-task", "3"]
    return out, call("ingest", argv)


def test_ingest_local_counts_and_errors(local_shards, video_dir):
    out, res = local_shards
    _check_result(res, str(video_dir))
    table = _rows(out)
    assert table.schema == schema.SHARD_SCHEMA
    assert table.num_rows == N_CLIPS
    assert len(set(table.column("clip_id").to_pylist())) == N_CLIPS
    assert len(schema.list_shards(out)) >= 2  # 7 files, 3 per task
    per_file = {}
    for src, start, n, sr, frames, fps in zip(*(table.column(c).to_pylist() for c in
                                                ("source_uri", "start_s", "num_samples", "sample_rate", "frames",
                                                 "fps"))):
        per_file.setdefault(os.path.relpath(src, video_dir), []).append(start)
        assert sr == SR and n == 2 * SR and fps == 1.0 and len(frames) == 2
    assert {k: len(v) for k, v in per_file.items()} == {k: v for k, v in EXPECTED.items() if isinstance(v, int)}
    assert sorted(per_file["good_a.mp4"]) == [0.0, 2.0]
    # the audio is the file's tone, resampled to 8 kHz
    row = table.filter(pa.compute.equal(table.column("source_uri"), str(video_dir / "good_a.mp4"))).slice(0, 1)
    wave, sr = schema.decode_audio(row.column("audio")[0].as_py())
    spec = np.abs(np.fft.rfft(wave))
    assert sr == SR and abs(np.argmax(spec) * SR / len(wave) - 440.0) < 5
    from PIL import Image
    import io
    assert Image.open(io.BytesIO(row.column("frames")[0].as_py()[0])).size == (224, 224)
    errors = pq.read_table(os.path.join(out, schema.ERRORS_NAME))
    assert errors.num_rows == N_BAD and errors.column_names == ["path", "reason"]
    manifest = json.loads(open(os.path.join(out, schema.MANIFEST_NAME)).read())
    assert len(manifest["files"]) == N_OK and manifest["last_run"]["clips_written"] == N_CLIPS


def test_ingest_rerun_does_not_duplicate(local_shards, video_dir):
    out, _ = local_shards
    before = sorted(schema.list_shards(out))
    again = ingest(str(video_dir), out, _opts())
    assert again["clips_written"] == 0 and again["files_skipped"] == N_OK
    assert again["files_rejected"] == N_BAD and again["clips_total"] == N_CLIPS
    assert _rows(out).num_rows == N_CLIPS
    redo = ingest(str(video_dir), out, _opts(), overwrite=True)
    assert redo["clips_written"] == N_CLIPS
    assert sorted(schema.list_shards(out)) == before  # deterministic names, overwritten
    assert _rows(out).num_rows == N_CLIPS
    with pytest.raises(ValueError, match="clips made with"):
        ingest(str(video_dir), out, IngestOptions(sample_rate=16000, clip_seconds=2.0))


def test_ingest_on_s3(ray_local, s3_bucket, video_dir):
    fs = storage.filesystem("s3://x")
    for root, _, names in os.walk(video_dir):
        for name in names:
            local = os.path.join(root, name)
            fs.put_file(local, f"{s3_bucket}/videos/{os.path.relpath(local, video_dir)}")
    src, out = f"s3://{s3_bucket}/videos", f"s3://{s3_bucket}/shards"
    res = call("ingest", [src, out, "--config", "tiny", "--clip-seconds", "2", "--files-per-task", "3"])
    _check_result(res, src)
    assert _rows(out).num_rows == N_CLIPS
    assert storage.exists(f"{out}/{schema.MANIFEST_NAME}") and storage.exists(f"{out}/{schema.ERRORS_NAME}")
    assert set(_rows(out).column("source_uri").to_pylist()) == {
        f"{src}/{k}" for k, v in EXPECTED.items() if isinstance(v, int)}
    again = call("ingest", [src, out, "--config", "tiny", "--clip-seconds", "2", "--files-per-task", "3"])
    assert again["clips_written"] == 0 and _rows(out).num_rows == N_CLIPS


@pytest.fixture(scope="module")
def labelled_shards(ray_local, video_dir, tmp_path_factory):
    """Index CSV (relative paths, labels, an extra column) -> shards."""
    index = video_dir / "index.csv"
    index.write_text("path,label,extra\n"
                     "good_a.mp4,dog barking,1\n"
                     f"{NAME_WITH_SPACES},violin,2\n"
                     "sub/good_c.mov,dog barking,3\n"
                     "missing.mp4,cat,4\n")
    out = str(tmp_path_factory.mktemp("labelled"))
    res = ingest("-", out, _opts(), index=str(index))
    assert res["clips_written"] == N_CLIPS and res["errors"] == [
        {"path": str(video_dir / "missing.mp4"), "reason": "not found"}]
    return out


def test_index_clip_ids_do_not_depend_on_where_the_videos_are(ray_local, video_dir, tmp_path):
    """An index's clip_id column names the videos: a copy elsewhere ingests to the same clip ids."""
    import shutil

    copies = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(video_dir / "good_a.mp4", d / "one.mp4")
        shutil.copy(video_dir / "sub" / "good_c.mov", d / "two.mov")
        (d / "index.csv").write_text("path,label,clip_id\none.mp4,dog barking,vid-1\ntwo.mov,violin,vid-2\n")
        out = str(tmp_path / f"out-{name}")
        assert ingest("-", out, _opts(), index=str(d / "index.csv"))["clips_written"] == 3  # 2 + 1 clips of 2 s
        copies.append(_rows(out))
    ids = [sorted(t.column("clip_id").to_pylist()) for t in copies]
    assert ids[0] == ids[1] and len(set(ids[0])) == 3
    assert sorted(copies[0].column("source_uri").to_pylist()) != sorted(copies[1].column("source_uri").to_pylist())
    assert schema.clip_id("vid-1", 0.0) in ids[0]


def test_index_with_a_repeated_clip_id_is_refused(tmp_path):
    index = tmp_path / "index.csv"
    index.write_text("path,clip_id\na.mp4,x\nb.mp4,y\nc.mp4,x\n")
    with pytest.raises(IngestError, match=r"line 4: clip_id 'x' repeats line 2"):
        read_index(str(index))


@pytest.fixture(scope="module")
def embedded(labelled_shards, clip_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("embedded"))
    argv = [labelled_shards, out, "--config", "tiny", "--clip-model", "test-data-clip", "--clip-pretrained", "",
            "--clip-config-dir", clip_dir, "--batch-size", "3"]
    return out, call("embed", argv), argv


def test_embed_adds_frame_embeddings_and_text(embedded):
    out, res, _ = embedded
    assert res["rows"] == N_CLIPS and res["shards_skipped"] == 0 and res["rows_without_embeddings"] == 0
    table = _rows(out)
    assert set(table.column("embedding_model").to_pylist()) == {"test-data-clip:"}
    for frames, emb in zip(table.column("frames").to_pylist(), table.column("image_embeddings").to_pylist()):
        arr = np.asarray(emb, np.float32)
        assert arr.shape == (len(frames), 32) and np.isfinite(arr).all() and np.abs(arr).sum() > 0
    text = load_text_embeddings(out)
    assert sorted(text) == ["dog barking", "violin"] and text["violin"].shape == (32,)
    ens = load_text_embeddings(out, ensemble=True)
    assert not np.allclose(ens["violin"], text["violin"])


def test_embed_rerun_is_idempotent(embedded):
    out, res, argv = embedded
    before = _rows(out)
    again = call("embed", argv)
    assert again["shards_skipped"] == again["shards"] == res["shards"]
    assert _rows(out).equals(before)
    redo = call("embed", argv + ["--overwrite"])  # recomputed: the same numbers (seeded weights)
    assert redo["shards_skipped"] == 0 and _rows(out).equals(before)


# -- streaming ---------------------------------------------------------------------------------
def test_streaming_rows_and_mixtures(embedded, cfg):
    out, _, _ = embedded
    stats = PrepStats()
    ds = training_dataset(out, cfg, split_seed=0, stats=stats, text_embeddings=out)
    seen, batches = 0, []
    for batch in iter_training_batches(ds, batch_size=2, shuffle_buffer=4, drop_last=False, device="cpu"):
        assert batch["audio"].dtype == torch.float32 and batch["audio"].shape[1] == cfg.audio.clip_samples
        assert batch["image_query"].shape[1] == 32 and batch["text_query"].shape[1] == 32
        assert batch["audio"].abs().sum() > 0
        seen += batch["audio"].shape[0]
        batches.append(batch)
    assert seen == N_CLIPS
    snap = stats.snapshot()
    assert snap["rows_ok"] == N_CLIPS and snap["rows_skipped"] == 0
    full = batches[0]
    mixed = mix_batch(full["audio"], full["image_query"], cfg.mixing, torch.Generator().manual_seed(0),
                      clip_index=full["clip_index"])
    torch.testing.assert_close(mixed["sources"].sum(1), mixed["mixture"])
    assert (mixed["index"][:, 0] != mixed["index"][:, 1]).all()


def test_small_data_set_is_listed_several_times_per_pass(embedded, cfg):
    out, _, _ = embedded
    ds = training_dataset(out, cfg, split_seed=0, min_rows_per_pass=2 * N_CLIPS + 1)  # -> 3 listings
    rows = ds.take_all()
    assert len(rows) == 3 * N_CLIPS
    counts: dict[int, int] = {}
    for r in rows:
        counts[int(r["clip_index"])] = counts.get(int(r["clip_index"]), 0) + 1
    assert len(counts) == N_CLIPS and set(counts.values()) == {3}  # every clip once per listing
    cached = training_dataset(out, cfg, split_seed=0, min_rows_per_pass=2 * N_CLIPS + 1, cache_mb=64).take_all()
    assert sorted(int(r["clip_index"]) for r in cached) == sorted(int(r["clip_index"]) for r in rows)
    assert len(training_dataset(out, cfg, split_seed=0, min_rows_per_pass=N_CLIPS).take_all()) == N_CLIPS


def test_small_data_set_is_cached_and_every_pass_prepares_all_rows(embedded, cfg, tmp_path):
    import shutil

    out, _, _ = embedded
    copy = tmp_path / "shards"
    shutil.copytree(out, copy)
    stats = PrepStats()
    ds = training_dataset(str(copy), cfg, split_seed=0, stats=stats, cache_mb=64)
    streamed = training_dataset(str(copy), cfg, split_seed=0, cache_mb=1e-6)  # too big for the cache
    first = [int(r["clip_index"]) for r in ds.iter_rows()]
    assert sorted(int(r["clip_index"]) for r in streamed.iter_rows()) == sorted(first)
    shutil.rmtree(copy)  # the cached pass no longer needs the files; the streamed one does
    second = [int(r["clip_index"]) for r in ds.iter_rows()]  # a second pass re-runs the preparation
    assert sorted(first) == sorted(second) and len(set(first)) == N_CLIPS
    assert stats.snapshot()["rows_ok"] == 2 * N_CLIPS
    with pytest.raises(Exception):
        streamed.take_all()


def test_planned_pass_repeats_for_a_seed(embedded, cfg):
    """data.planned_pass: the rows, their windows and their order are the seed's alone; each
    epoch (N_CLIPS positions) holds every clip once."""
    out, _, _ = embedded

    def rows(seed):
        ds = training_dataset(out, cfg, split_seed=seed, cache_mb=64, planned_rows=3 * N_CLIPS)
        assert ds.context.execution_options.preserve_order
        return [(int(r["clip_index"]), r["audio"].tobytes()) for r in ds.iter_rows()]

    first, again, other = rows(0), rows(0), rows(1)
    assert len(first) == 3 * N_CLIPS and first == again
    assert [c for c, _ in first] != [c for c, _ in other]
    for epoch in range(3):
        assert len({c for c, _ in first[epoch * N_CLIPS:(epoch + 1) * N_CLIPS]}) == N_CLIPS


def test_planned_pass_runs_with_less_than_one_cpu_free(embedded, cfg):
    """In a sweep on 2 CPUs the trial and its Train worker reserve 1.1 CPUs: a planned pass must
    need no whole-CPU task (ray.data.range and from_numpy start such tasks; one waited for ever)."""
    from concurrent.futures import ThreadPoolExecutor

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    out, _, _ = embedded
    pg = placement_group([{"CPU": 1.5}])
    ray.get(pg.ready(), timeout=60)
    pool = ThreadPoolExecutor(1)
    try:
        def rows_of_pass():  # building the dataset may start tasks too (from_numpy does)
            return training_dataset(out, cfg, split_seed=0, cache_mb=64, planned_rows=2 * N_CLIPS,
                                    prep_cpus=0.25).take_all()

        rows = pool.submit(rows_of_pass).result(timeout=120)  # a TimeoutError here: a task waits for a CPU
        assert len(rows) == 2 * N_CLIPS
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        remove_placement_group(pg)


def test_a_held_back_pass_leaves_the_cpu_alone(embedded, cfg):
    """A consumer that stops taking batches holds the pass back. Ray 2.60's scheduling loop then
    spun without waiting (the demo's SplitCoordinator burnt 60-87% of a core beside the training
    workers); ``data.idle.IdleWait`` pauses it after steps that change nothing."""
    import time

    out, _, _ = embedded
    ds = training_dataset(out, cfg, split_seed=0, cache_mb=64, planned_rows=5000 * N_CLIPS)  # ~800 MB
    batches = iter(ds.iter_batches(batch_size=8, prefetch_batches=1))
    next(batches)
    time.sleep(4)  # the pass fills what the object store allows and stalls
    cpu, wall = time.process_time(), time.perf_counter()
    time.sleep(3)
    busy = (time.process_time() - cpu) / (time.perf_counter() - wall)
    assert busy < 0.2, f"the held-back pass used {busy:.0%} of a core"
    assert len(next(batches)["audio"]) == 8  # and it still delivers


def test_corrupt_audio_cell_is_skipped_and_counted(ray_local, embedded, cfg, tmp_path):
    out, _, _ = embedded
    table = _rows(out)
    audio = table.column("audio").to_pylist()
    audio[0] = b"this is not flac"
    bad_id = table.column("clip_id")[0].as_py()
    table = table.set_column(table.schema.get_field_index("audio"), "audio", pa.array(audio, pa.binary()))
    schema.write_shard(table, str(tmp_path / "part-broken.parquet"))
    stats = PrepStats()
    ds = training_dataset(str(tmp_path), cfg, stats=stats)
    rows = ds.take_all()
    assert len(rows) == N_CLIPS - 1
    assert schema.clip_index(bad_id) not in {int(r["clip_index"]) for r in rows}
    snap = stats.snapshot()
    assert snap["rows_skipped"] == 1 and snap["rows_ok"] == N_CLIPS - 1
    assert snap["examples"][0]["clip_id"] == bad_id and "corrupt audio" in snap["examples"][0]["reason"]
    ev = eval_rows(str(tmp_path), cfg)
    assert ev["skipped"] == 1 and len(ev["clip_id"]) == N_CLIPS - 1 and bad_id not in ev["clip_id"]


def test_eval_rows_are_deterministic(embedded, cfg):
    out, _, _ = embedded
    a, b = eval_rows(out, cfg, text_embeddings=out), eval_rows(out, cfg, text_embeddings=out)
    assert a["clip_id"] == sorted(a["clip_id"]) and a["clip_id"] == b["clip_id"]
    assert np.array_equal(a["audio"], b["audio"]) and np.array_equal(a["image_query"], b["image_query"])
    # evaluation windows cover the published 4.08 s, longer than a training window here
    assert a["audio"].shape == (N_CLIPS, cfg.audio.eval_samples) and a["image_query"].shape == (N_CLIPS, 32)
    assert a["text_query"].shape == (N_CLIPS, 32) and set(a["label"]) == {"dog barking", "violin"}
    train, val = split_shards(out, val_fraction=0.5, seed=0)
    assert sorted(train + val) == schema.list_shards(out)


# -- shards and row preparation (no Ray needed) -----------------------------------------------------
def _synthetic_table(n_rows=3, seconds=10, sr=SR, d=4):
    rows = []
    for r in range(n_rows):
        # second s holds the constant level (s + 1) / 20: the window's middle names its second
        wave = np.repeat((np.arange(seconds) + 1) / 20.0, sr).astype(np.float32)
        rows.append({"clip_id": schema.clip_id(f"mem://v{r}", 0.0), "source_uri": f"mem://v{r}", "start_s": 0.0,
                     "audio": schema.encode_audio(wave, sr), "sample_rate": sr, "num_samples": len(wave),
                     "frames": [b"jpeg"] * seconds, "fps": 1.0, "label": None if r else "dog",
                     "image_embeddings": [[float(k)] * d for k in range(seconds)], "embedding_model": "m"})
    return pa.Table.from_pylist(rows, schema=schema.SHARD_SCHEMA)


def test_windows_cut_from_decoded_clips_equal_windows_decoded_per_row():
    """A planned pass decodes each clip once per process and cuts the windows from it: the same
    rows, windows, queries and failures as decoding each window from FLAC (long, short = tiled,
    another rate = resampled, corrupt = skipped by name)."""
    from clipsep_ray.data.shards import _decoded_set

    g = np.random.default_rng(0)
    rows = []
    for r, (seconds, sr) in enumerate([(10, 1000), (3, 1000), (10, 2000), (10, 1000)]):
        wave = g.uniform(-0.5, 0.5, seconds * sr).astype(np.float32)
        audio = schema.encode_audio(wave, sr) if r != 3 else b"not flac at all"
        rows.append({"clip_id": f"c{r}", "source_uri": f"mem://v{r}", "start_s": 0.0, "audio": audio,
                     "sample_rate": sr, "num_samples": len(wave), "frames": [b"jpeg"] * seconds, "fps": 1.0,
                     "label": None, "image_embeddings": g.normal(size=(seconds, 4)).tolist(),
                     "embedding_model": "m"})
    table = pa.Table.from_pylist(rows, schema=schema.SHARD_SCHEMA)
    prep = RowPrep(sample_rate=1000, clip_samples=4095, embed_dim=4)
    order = [0, 3, 1, 2, 0, 0, 2, 1, 3, 1]
    wholes = _decoded_set("test-set", table, prep)
    assert isinstance(wholes[3], schema.ShardError) and _decoded_set("test-set", table, prep) is wholes
    per_row, fails = prep.prepare(table.take(order), "train", np.random.default_rng(7))
    cut, cut_fails = prep.prepare(table, "train", np.random.default_rng(7), rows=order, wholes=wholes)
    assert set(cut) == set(per_row)
    for name in per_row:
        assert np.array_equal(cut[name], per_row[name]), name
    assert len(cut["audio"]) == 8 and [f[0] for f in cut_fails] == [f[0] for f in fails] == ["c3", "c3"]
    assert "corrupt audio cell" in cut_fails[0][2]


def test_shard_round_trip_local_and_s3(tmp_path, s3_bucket):
    table = _synthetic_table()
    for uri in (str(tmp_path / "a" / "part-x.parquet"), f"s3://{s3_bucket}/p/part-x.parquet"):
        schema.write_shard(table, uri)
        back = schema.read_shard(uri)
        assert back.equals(table)
        assert schema.list_shards(uri.rsplit("/", 1)[0]) == [uri]
    with pytest.raises(schema.ShardError, match="missing column 'audio'"):
        schema.write_shard(table.drop_columns(["audio"]), str(tmp_path / "bad.parquet"))


def test_row_prep_centres_window_and_pools_queries():
    table = _synthetic_table(n_rows=1, sr=1000)
    prep = RowPrep(sample_rate=1000, clip_samples=4095, frames_per_query=3, embed_dim=4)
    ev, fails = prep.prepare(table, "eval")
    assert not fails
    mid = ev["audio"][0, 4095 // 2]
    assert abs(mid - 5 / 20) < 1e-3  # c = 10 // 2 = 5: the window is centred in second 5
    assert np.allclose(ev["image_query"][0], 4.0)  # mean of frames 4, 5, 6 (1-based) = embeddings 3, 4, 5
    rng = np.random.default_rng(0)
    centres = set()
    for _ in range(40):
        tr, _ = prep.prepare(table, "train", rng)
        c = int(round(tr["audio"][0, 4095 // 2] * 20))
        centres.add(c)
        assert np.allclose(tr["image_query"][0], c - 1)  # query and audio window agree on c
    assert centres == {4, 5, 6, 7}
    # a clip shorter than the window is tiled, not zero-padded
    short = RowPrep(sample_rate=1000, clip_samples=25000, embed_dim=4).prepare(table, "eval")[0]["audio"][0]
    assert np.array_equal(short[:10000], short[10000:20000]) and short[20000:].min() > 0
    # another model rate: resampled on the fly
    rs = RowPrep(sample_rate=500, clip_samples=2047, embed_dim=4).prepare(table, "eval")[0]["audio"][0]
    assert abs(rs[1023] - 5 / 20) < 1e-2
    # wrong embedding size is a configuration error that names the field
    with pytest.raises(ValueError, match="model.embed_dim"):
        RowPrep(sample_rate=1000, clip_samples=4095, embed_dim=8).prepare(table, "eval")
