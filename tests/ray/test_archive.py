"""Archive separation on Ray Data: mixed formats, rates, channels, a long file, a video, broken
files and awkward names; stems at the input's rate and length that add back up to the input;
a manifest row per input; re-runs that do no model work; a killed run that re-runs into exactly
one complete set of outputs; another query set refused; S3 to S3."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from clipsep_ray.audio.io import load_audio, write_audio

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUERIES = ["dog barking", "Rain!"]
STEMS = ("dog_barking", "rain", "residual")


def _tone(sr: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    mono = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    return mono.astype(np.float32) if channels == 1 else np.stack([mono, 0.5 * mono]).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """name -> (sample rate, samples) of the good inputs; the broken ones are listed apart."""
    from clipsep_ray.synth.videos import write_mp4

    root = tmp_path_factory.mktemp("archive")
    good = {}

    def add(rel, wave, sr, **kw):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kw:
            sf.write(str(path), wave.T if wave.ndim == 2 else wave, sr, **kw)
        else:
            write_audio(str(path), wave, sr)
        good[rel] = (sr, wave.shape[-1])

    add("a.wav", _tone(16000, 1.3), 16000)
    add("sub/b song.flac", _tone(44100, 2.1, channels=2), 44100)
    add("pcm24.wav", _tone(22050, 1.7, seed=1), 22050, subtype="PCM_24")
    add("float.wav", _tone(48000, 1.1, seed=2), 48000, subtype="FLOAT")
    add("d.ogg", _tone(32000, 1.5, seed=3), 32000)
    add("long/minutes.wav", _tone(8000, 150.0, seed=4), 8000)
    add("ünï cødé/日本 語.flac", _tone(11025, 1.2, seed=5), 11025)
    add("...wav", _tone(16000, 1.0, seed=6), 16000, format="WAV")  # its stem is ".."
    video_audio = _tone(16000, 2.0, seed=7)
    write_mp4(root / "clip.mp4", [np.zeros((32, 32, 3), np.uint8)] * 2, 1, video_audio, 16000)
    good["clip.mp4"] = (16000, None)  # AAC: the decoder's length (priming samples) is what counts
    add("song.wav", _tone(16000, 1.0, seed=8), 16000)  # song.wav and song.flac: one name, both kept
    add("song.flac", _tone(24000, 1.0, seed=9), 24000)
    add("_tmp.wav", _tone(16000, 1.0, seed=12), 16000)  # the job's temporary folder's name: escaped
    add("10::30 talk.wav", _tone(16000, 1.0, seed=13), 16000)  # "::": a name, not an fsspec chain
    add("e.mp3", _tone(44100, 1.5, seed=10), 44100, format="MP3")
    good["e.mp3"] = (44100, None)  # MP3: the decoder's length (encoder delay and padding) is what counts
    _encode_av(root / "f.m4a", "ipod", _tone(22050, 1.4, seed=11), 22050)
    good["f.m4a"] = (22050, None)
    _video_only(root / "silent.mkv")
    (root / "broken.wav").write_bytes(os.urandom(3000))
    (root / "empty.flac").write_bytes(b"")
    data = (root / "a.wav").read_bytes()
    (root / "truncated.wav").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not audio")
    return root, good, {"broken.wav", "empty.flac", "truncated.wav", "silent.mkv"}


def _encode_av(path, container: str, wave, sr: int) -> None:
    import av

    with av.open(str(path), "w", format=container) as out:
        a = out.add_stream("aac", rate=sr)
        a.layout = "mono"
        for start in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[start:start + 1024])[None], format="flt",
                                               layout="mono")
            frame.sample_rate, frame.pts = sr, start
            out.mux(a.encode(frame))
        out.mux(a.encode())


def _video_only(path) -> None:
    """A video with no audio track: a failed row ("no audio stream"), not a crash."""
    import av

    with av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=1)
        v.width = v.height = 32
        v.pix_fmt = "yuv420p"
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode())


def _check_outputs(out, good, broken):
    from clipsep_ray.batch.archive import read_manifest

    rows = {r["relative_path"]: r for r in read_manifest(str(out))}
    assert set(rows) == set(good) | broken  # every input has a row, the .txt none
    csv_lines = (out / "_manifest.csv").read_text().strip().splitlines()
    assert len(csv_lines) == len(rows) + 1
    for rel in broken:
        assert rows[rel]["status"] == "failed" and rows[rel]["error"] and not rows[rel]["outputs"]
    dirs = set()
    for rel, (sr, n) in good.items():
        r = rows[rel]
        assert r["status"] == "done", (rel, r["error"])
        assert r["queries"] == QUERIES and len(r["outputs"]) == 3
        src, src_sr = load_audio(r["input"])
        assert src_sr == sr and r["sample_rate"] == sr
        stems = {}
        for uri in r["outputs"]:
            wave, got_sr = load_audio(uri)
            assert got_sr == sr and len(wave) == len(src), (uri, len(wave), len(src))
            stems[os.path.basename(uri).rsplit(".", 1)[0]] = wave
        assert set(stems) == set(STEMS)
        # stems + residual = the input, to the outputs' precision: 16-bit FLAC, 24-bit for deeper sources
        assert np.abs(sum(stems.values()) - src).max() < (2e-5 if rel in ("pcm24.wav", "float.wav") else 2e-3), rel
        dirs.add(os.path.dirname(r["outputs"][0]))
    assert len(dirs) == len(good)  # one folder per input, nobody overwrote anybody
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or "_tmp" in p.parts]
    assert not leftovers, leftovers
    return rows


@pytest.mark.parametrize("pipeline", ["staged", "fused"])
def test_archive_folder_to_folder_rerun_and_refusals(ray_local, checkpoint, archive, tmp_path, pipeline):
    from clipsep_ray.batch.archive import ArchiveError, separate_archive

    root, good, broken = archive
    out = tmp_path / "out"
    # staged with 1 slot for the inputs' float copies in _tmp/: one input at a time from decode to encode,
    # and no deadlock (decoding ran ahead of the model without limit: 98 copies on disk for 31 separated)
    first = separate_archive(checkpoint, QUERIES, str(root), str(out), task_cpus=0.25, cpus_per_actor=0.5,
                             pipeline=pipeline, temp_inputs=1)
    assert first["pipeline"] == pipeline
    if pipeline == "staged":
        assert first["temp_inputs"]["slots"] == 1 and first["temp_inputs"]["peak"] == 1
    # No --actors: as many as the 2-CPU cluster holds at 0.5 CPU each (staged keeps 2 x 0.25 for its tasks).
    assert first["actors"] == {"staged": 3, "fused": 4}[pipeline]
    assert first["inputs"] == len(good) + len(broken) and first["ignored"] == 1
    assert first["failed"] == len(broken) and first["separated"] == len(good)
    rows = _check_outputs(out, good, broken)
    assert rows["...wav"]["outputs"][0].split("/")[-2] == "_"  # a name of dots becomes a visible folder
    assert rows["_tmp.wav"]["outputs"][0].split("/")[-2] == "_tmp~"  # kept apart from the clean-up of _tmp/
    assert {u.split("/")[-2][:5] for r in ("song.wav", "song.flac") for u in rows[r]["outputs"]} == {"song~"}
    assert "no audio stream" in rows["silent.mkv"]["error"]
    assert any("ünï cødé/日本 語/" in u for u in rows["ünï cødé/日本 語.flac"]["outputs"])  # unicode kept readable
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")}

    again = separate_archive(checkpoint, QUERIES, str(root), str(out), task_cpus=0.25, cpus_per_actor=0.5)
    assert again["already_done"] == len(good) and again["separated"] == 0  # no model work for done inputs
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")} == before

    with pytest.raises(ArchiveError, match="--overwrite"):
        separate_archive(checkpoint, ["siren"], str(root), str(out))


def test_cli_exit_codes(ray_local, checkpoint, archive, tmp_path, capsys):
    from clipsep_ray.cli import main

    # GPU actors on this cluster without GPUs: Ray Data would wait for them without end
    assert main(["separate-archive", str(archive[0] / "a.wav"), str(tmp_path / "o0"), "--checkpoint", checkpoint,
                 "--query", "dog", "--gpus-per-actor", "1"]) == 2
    assert "ask for 1 GPU each and the cluster has none" in capsys.readouterr().err

    root, good, broken = archive
    assert main(["separate-archive", str(root / "long"), str(tmp_path / "o1"), "--checkpoint", checkpoint,
                 "--query", "dog", "--task-cpus", "0.25", "--cpus-per-actor", "0.5"]) == 0
    assert main(["separate-archive", str(root / "broken.wav"), str(tmp_path / "o2"), "--checkpoint", checkpoint,
                 "--query", "dog"]) == 1
    assert "broken.wav" in capsys.readouterr().out
    assert main(["separate-archive", str(root), str(tmp_path / "o3"), "--checkpoint", checkpoint,
                 "--query", " "]) == 2
    assert main(["separate-archive", str(tmp_path / "missing"), str(tmp_path / "o4"), "--checkpoint", checkpoint,
                 "--query", "dog"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    for output in (tmp_path / "a-file", tmp_path / "a-file" / "out", "/sys/clipsep-out"):  # /sys: even root may not
        assert main(["separate-archive", str(root / "a.wav"), str(output), "--checkpoint", checkpoint,
                     "--query", "dog"]) == 2
        assert f"cannot use OUTPUT_URI {output}" in capsys.readouterr().err


def test_killed_run_reruns_into_one_complete_set(ray_local, checkpoint, archive, tmp_path):
    """SIGKILL the driver (joined to this cluster) once outputs start to appear; the re-run completes."""
    import ray

    from clipsep_ray.batch.archive import separate_archive

    root, good, broken = archive
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "clipsep_ray.cli", "separate-archive", str(root), str(out), "--checkpoint", checkpoint,
           "--query", QUERIES[0], "--query", QUERIES[1], "--task-cpus", "0.25", "--cpus-per-actor", "0.5",
           "--pipeline", "staged", "--address", ray.get_runtime_context().gcs_address]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and not list(out.rglob("residual.flac")):
        time.sleep(0.2)
    assert proc.poll() is None, "the first run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # the cluster ends the dead driver's tasks and actors
    done_before = len(list(out.rglob("residual.flac")))
    assert 0 < done_before < len(good)
    result = separate_archive(checkpoint, QUERIES, str(root), str(out), task_cpus=0.25, cpus_per_actor=0.5,
                              pipeline="staged")
    assert result["done"] == len(good) and result["failed"] == len(broken)
    _check_outputs(out, good, broken)
    assert len(list(out.rglob("*.flac"))) == 3 * len(good)  # exactly one set, no duplicate


def test_overwrite_leaves_only_the_new_jobs_outputs(ray_local, checkpoint, archive, tmp_path, monkeypatch):
    """--overwrite removes the old job's outputs, those its manifest lists and those a run killed
    before its first manifest write left unlisted, and its manifest before the new job is
    recorded: a new job killed at once and re-run cannot take the old rows for its own."""
    from clipsep_ray.batch import archive as job
    from clipsep_ray.batch.archive import read_manifest, separate_archive

    root, _, _ = archive
    src, out = tmp_path / "in", tmp_path / "out"
    for rel in ("a.wav", "sub/b song.flac"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((root / rel).read_bytes())
    kw = {"task_cpus": 0.25, "cpus_per_actor": 0.5}
    assert separate_archive(checkpoint, QUERIES, str(src), str(out), **kw)["done"] == 2
    for name in ("_manifest.parquet", "_manifest.csv"):
        (out / name).unlink()  # as if killed before its first manifest write: two sets of outputs unlisted

    def folders():
        return {d: sorted(p.name for p in (out / d).iterdir()) for d in ("a", "sub/b song")}

    assert separate_archive(checkpoint, ["siren"], str(src), str(out), overwrite=True, **kw)["done"] == 2
    assert folders() == {d: ["residual.flac", "siren.flac"] for d in ("a", "sub/b song")}

    def killed(*a, **k):
        raise KeyboardInterrupt("killed before any input was done")

    monkeypatch.setattr(job, "_separate", killed)
    monkeypatch.setattr(job, "write_manifest", killed)  # a SIGKILL: not even the finally's manifest write
    with pytest.raises(KeyboardInterrupt):
        separate_archive(checkpoint, ["engine"], str(src), str(out), overwrite=True, **kw)
    monkeypatch.undo()
    assert not (out / "_manifest.parquet").exists() and json.loads((out / "_job.json").read_text())["queries"] == [
        "engine"]
    again = separate_archive(checkpoint, ["engine"], str(src), str(out), **kw)  # its own job: no --overwrite
    assert again["separated"] == 2 and again["already_done"] == 0
    assert folders() == {d: ["engine.flac", "residual.flac"] for d in ("a", "sub/b song")}
    assert {tuple(r["queries"]) for r in read_manifest(str(out))} == {("engine",)}


def test_list_of_uris(ray_local, checkpoint, archive, tmp_path):
    from clipsep_ray.batch.archive import read_manifest, separate_archive

    root, good, _ = archive
    listing = tmp_path / "list.csv"
    listing.write_text("uri\n" + "\n".join(str(root / r) for r in ("a.wav", "d.ogg")) + "\n")
    result = separate_archive(checkpoint, QUERIES, str(listing), str(tmp_path / "out"), task_cpus=0.25,
                              cpus_per_actor=0.5)
    assert result["done"] == 2
    assert {r["input"] for r in read_manifest(str(tmp_path / "out"))} == {str(root / "a.wav"), str(root / "d.ogg")}


def test_a_list_of_presigned_urls(ray_local, s3_server, checkpoint, archive, tmp_path):
    """A headerless CSV of presigned S3 GET URLs: the query string names no extension and no output
    folder (the list was refused as "no audio or video extension")."""
    from clipsep_ray.batch.archive import read_manifest, separate_archive

    root, good, _ = archive
    bucket = s3_server.make_bucket("presigned")
    client = s3_server.client()
    urls = []
    for rel in ("a.wav", "sub/b song.flac"):
        client.put_object(Bucket=bucket, Key=f"in/{rel}", Body=(root / rel).read_bytes())
        urls.append(client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": f"in/{rel}"},
                                                  ExpiresIn=600))
    assert all("X-Amz-Signature=" in u or "Signature=" in u for u in urls)
    (tmp_path / "list.csv").write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"
    result = separate_archive(checkpoint, QUERIES, str(tmp_path / "list.csv"), str(out), cpus_per_actor=0.5)
    assert result["done"] == 2, result["failures"]
    rows = {r["relative_path"]: r for r in read_manifest(str(out))}
    host = urls[0].split("://", 1)[1].split("/", 1)[0]
    assert set(rows) == {f"{host}/{bucket}/in/a.wav", f"{host}/{bucket}/in/sub/b song.flac"}  # %20 decoded
    wave, sr = load_audio(rows[f"{host}/{bucket}/in/a.wav"]["outputs"][0])
    assert sr == good["a.wav"][0] and len(wave) == good["a.wav"][1]


@pytest.mark.parametrize("pipeline", ["staged", "fused"])
def test_s3_to_s3(ray_local, s3_server, checkpoint, archive, pipeline, monkeypatch):
    """Input, output and checkpoint on S3, the endpoint given as --endpoint-url only: this process's
    own AWS_ENDPOINT_URL points nowhere, so the checkpoint is read through the given one (the
    workers inherited the test server's at the cluster's start)."""
    import s3fs

    from clipsep_ray.batch.archive import read_manifest, separate_archive

    root, good, _ = archive
    bucket = s3_server.make_bucket(f"archive-{pipeline}")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server.endpoint})
    names = ("a.wav", "sub/b song.flac", "clip.mp4", "10::30 talk.wav")
    for rel in names:
        fs.put_file(str(root / rel), f"{bucket}/in/{rel}")
    fs.put_file(checkpoint, f"{bucket}/model.pt")
    out = f"s3://{bucket}/out"
    s3 = s3_server.client()  # a killed run's output in parts, unfinished (invisible to a listing); another's
    for key in ("out/a/dog.flac", "outer/keep.flac"):
        s3.create_multipart_upload(Bucket=bucket, Key=key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    result = separate_archive(f"s3://{bucket}/model.pt", QUERIES, f"s3://{bucket}/in", out, task_cpus=0.25,
                              cpus_per_actor=0.5, endpoint=s3_server.endpoint, pipeline=pipeline)
    monkeypatch.undo()
    assert result["done"] == 4 and result["failed"] == 0 and result["pipeline"] == pipeline, result["failures"]
    rows = {r["relative_path"]: r for r in read_manifest(out)}
    assert set(rows) == set(names)
    wave, sr = load_audio(rows["sub/b song.flac"]["outputs"][0])
    assert sr == 44100 and len(wave) == good["sub/b song.flac"][1]
    assert sorted(fs.ls(f"{bucket}/out/10::30 talk")) == [f"{bucket}/out/10::30 talk/{s}.flac" for s in sorted(STEMS)]
    assert not fs.exists(f"{bucket}/out/10")  # every output of the name once went to this one key
    assert not [p for p in fs.find(f"{bucket}/out") if "/_tmp/" in p or p.rsplit("/", 1)[-1].startswith(".")]
    assert fs.exists(f"{bucket}/out/_manifest.csv")
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == ["outer/keep.flac"]


def test_a_row_reaches_the_driver_when_its_file_is_done_not_when_the_next_one_is(ray_local, tmp_path):
    """The second row's work waits (at most 20 s) for a flag the consumer sets on receiving the
    first row: with a prefetching iterator the first row is held back until the second is done,
    and the second then reports that it gave up waiting."""
    import ray

    from clipsep_ray.batch.archive import _rows

    flag = tmp_path / "first-row-received"

    def work(batch):
        if batch["i"][0] == 1:
            deadline = time.time() + 20
            while not flag.exists() and time.time() < deadline:
                time.sleep(0.05)
            batch["saw_flag"] = np.array([flag.exists()])
        else:
            batch["saw_flag"] = np.array([False])
        return batch

    ds = ray.data.from_items([{"i": 0}, {"i": 1}], override_num_blocks=2).map_batches(
        work, batch_size=1, num_cpus=0.5)
    got = []
    for row in _rows(ds):
        got.append(row)
        flag.touch()
    assert [r["i"] for r in got] == [0, 1]
    assert got[1]["saw_flag"], "the first row reached the consumer only after the second row's work ended"


def test_actors_refuse_a_checkpoint_replaced_after_the_job_recorded_it(ray_local, checkpoint, archive, tmp_path):
    """Another checkpoint written to the job's URI after the driver read it (here: just before the
    actors start; on a cluster, before an actor is restarted): no actor separates with it, the job
    ends with an error naming the URI, and no output or manifest row claims the recorded one."""
    import shutil

    from clipsep_ray.batch.archive import ArchiveError, read_manifest, separate_archive
    from clipsep_ray.config import load_config
    from clipsep_ray.models.checkpoint import save_checkpoint
    from clipsep_ray.models.registry import build_model

    root, good, broken = archive
    ckpt = str(tmp_path / "model.pt")
    shutil.copy(checkpoint, ckpt)
    cfg = load_config("tiny")
    other = save_checkpoint(str(tmp_path / "other.pt"), build_model(cfg.model), cfg)

    def log(line: str) -> None:
        if "model actor" in line:  # the driver's checks are done; the actors load the file next
            shutil.copy(other, ckpt)

    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match=f"{ckpt} changed since the job recorded it"):
        separate_archive(ckpt, ["dog"], str(root / "long"), str(out), cpus_per_actor=0.5, log=log)
    assert not list(out.rglob("*.flac"))
    assert read_manifest(str(out)) == []  # written all the same: a job that fails records what it finished


def test_an_interrupted_job_records_the_inputs_it_finished(ray_local, checkpoint, archive, tmp_path):
    """Ctrl-C (here raised by the first progress line, right after the first row) still writes the
    manifest: the inputs done so far are recorded, and the re-run does not separate them again."""
    import shutil

    from clipsep_ray.batch.archive import read_manifest, separate_archive

    root, good, broken = archive
    src = tmp_path / "in"
    for rel in ("a.wav", "d.ogg", "long/minutes.wav"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, src / rel)

    def log(line: str) -> None:
        if " files, " in line:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        separate_archive(checkpoint, ["dog"], str(src), str(out), cpus_per_actor=0.5, log=log)
    rows = read_manifest(str(out))
    assert len(rows) == 1 and rows[0]["status"] == "done" and all(os.path.exists(u) for u in rows[0]["outputs"])
    again = separate_archive(checkpoint, ["dog"], str(src), str(out), cpus_per_actor=0.5)
    assert again["already_done"] == 1 and again["separated"] == 2 and again["done"] == 3
