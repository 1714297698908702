"""The archive job's temporary files: what a killed write leaves is what the clean-up removes,
and the staged pipeline drops each input's temporaries as soon as the input is finished."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

from clipsep_ray import storage

KILL_AT_RENAME = "import os, signal; os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"


def _killed(code: str) -> None:
    """Run ``code`` in a process killed (SIGKILL) where it would rename its finished temporary file."""
    proc = subprocess.run([sys.executable, "-c", KILL_AT_RENAME + code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_writes_killed_before_their_rename_leave_temporaries_the_clean_up_removes(tmp_path):
    from clipsep_ray.batch.archive import _remove_leftovers

    out = tmp_path / "out"
    _killed(f"from clipsep_ray import storage; storage.write_bytes({str(out / '_manifest.csv')!r}, b'x')")
    _killed("import numpy as np; from clipsep_ray.audio.io import StreamingAudioWriter\n"
            f"w = StreamingAudioWriter({str(out / 'a' / 'dog.flac')!r}, 8000); w.write(np.zeros(800)); w.close()")
    _killed("import numpy as np; from clipsep_ray.audio.io import StreamingAudioWriter\n"
            f"w = StreamingAudioWriter({str(out / 'b' / 'c' / 'dog.flac')!r}, 8000); w.write(np.zeros(800)); w.close()")
    temps = [p.name for p in out.rglob("*") if p.is_file()]
    assert len(temps) == 3 and all(storage.TEMP_NAME.match(t) for t in temps), temps
    (out / "a" / "residual.flac").write_bytes(b"a finished output")
    (out / ".DS_Store").write_bytes(b"not ours")
    assert _remove_leftovers(str(out), None) == 3
    # the folders that held only a killed writer's temporary go too (b/c, then b)
    assert sorted(os.listdir(out)) == [".DS_Store", "a"] and os.listdir(out / "a") == ["residual.flac"]


def test_the_last_stage_drops_each_inputs_temporaries_done_or_failed(tmp_path):
    from clipsep_ray.batch import stages

    out = str(tmp_path / "out")
    rows = [{"key": k, "status": s} for k, s in (("k1", "ok"), ("k2", "failed"), ("k3", "ok"))]
    for r in rows[:2]:
        for name in ("input.wav", "stem0.wav"):
            path = stages.tmp_uri(out, r["key"], name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "wb").close()
    result = stages.dropping_temporaries(lambda batch: batch, out)(stages.batch_of(rows))
    assert [r["key"] for r in stages.rows_of(result)] == ["k1", "k2", "k3"]
    assert os.listdir(os.path.join(out, stages.TMP)) == []


def test_any_error_of_one_input_fails_its_row_and_the_others_go_on():
    from clipsep_ray.batch import stages

    def decode(row):
        if row["key"] == "odd":
            raise IndexError("list index out of range")  # not a decoder's usual error type
        return {**row, "sample_rate": 8000}

    rows = [{"key": k, "status": "ok", "error": "", "seconds": 0.0, "sample_rate": 0} for k in ("a", "odd", "b")]
    out = {r["key"]: r for r in stages.rows_of(stages.per_row(decode, "decode")(stages.batch_of(rows)))}
    assert out["odd"]["status"] == "failed" and out["odd"]["error"] == "IndexError: list index out of range"
    assert out["a"]["status"] == out["b"]["status"] == "ok" and out["b"]["sample_rate"] == 8000
    try:
        stages.per_row(lambda row: (_ for _ in ()).throw(KeyboardInterrupt()), "decode")(stages.batch_of(rows))
    except KeyboardInterrupt:
        pass  # an interrupt is not an input's fault: it still ends the job
    else:
        raise AssertionError("KeyboardInterrupt was swallowed")


def test_a_model_with_fixed_outputs_says_that_the_queries_are_not_used(tmp_path):
    """A PIT checkpoint separates its sources whatever --query says: the job says so (no inputs
    here, so no Ray is started)."""
    from clipsep_ray.batch.archive import separate_archive
    from clipsep_ray.config import load_config
    from clipsep_ray.models.checkpoint import save_checkpoint
    from clipsep_ray.models.registry import build_model

    cfg = load_config("tiny", ["model.arch=pit", "model.unet_width=4", "query.clip_pretrained="])
    ckpt = save_checkpoint(str(tmp_path / "pit.pt"), build_model(cfg.model), cfg)
    (tmp_path / "in").mkdir()
    lines = []
    result = separate_archive(ckpt, ["dog barking"], str(tmp_path / "in"), str(tmp_path / "out"), log=lines.append)
    assert result["inputs"] == 0 and result["done"] == 0
    assert any("fixed sources (source_1, source_2)" in line and "'dog barking' is not used" in line
               for line in lines), lines


def test_the_same_queries_in_another_order_are_the_same_job_and_others_are_refused(tmp_path):
    import json

    import pytest

    from clipsep_ray.batch.archive import ArchiveError, _check_job

    out = tmp_path / "out"
    out.mkdir()
    old = {"checkpoint": "a.pt", "checkpoint_sha256": "ab12", "queries": ["dog", "rain"], "format": "flac"}
    (out / "_job.json").write_text(json.dumps(old))
    assert _check_job(str(out), {**old, "queries": ["rain", "dog"]}, False, None) == old  # same outputs, same job
    with pytest.raises(ArchiveError, match="--overwrite"):
        _check_job(str(out), {**old, "queries": ["dog"]}, False, None)
    with pytest.raises(ArchiveError, match="--overwrite"):
        _check_job(str(out), {**old, "checkpoint_sha256": "cd34"}, False, None)
    assert _check_job(str(out), {**old, "queries": ["siren"]}, True, None) is None  # --overwrite: a new job


def test_a_previous_row_counts_only_for_the_same_input_and_these_outputs(tmp_path):
    """Two archives with a file of the same relative path run into one OUTPUT_URI, or an output
    folder copied elsewhere: the old row must not pass for this run's input or outputs."""
    from clipsep_ray.batch.archive import _resume, write_manifest
    from clipsep_ray.batch.inputs import assign_output_dirs

    job = {"checkpoint": "a.pt", "checkpoint_sha256": "ab12", "queries": ["dog"], "format": "flac"}

    def run_into(out, src: str):
        item = assign_output_dirs([(f"{tmp_path}/{src}/rec_001.wav", "rec_001.wav", None)])[0]
        return _resume(str(out), job, [item], False, None, print)[0]

    out = tmp_path / "out"
    (out / "rec_001").mkdir(parents=True)
    for name in ("dog.flac", "residual.flac"):
        (out / "rec_001" / name).write_bytes(b"x")
    row = {"input": f"{tmp_path}/jan/rec_001.wav", "relative_path": "rec_001.wav", "status": "done", "error": "",
           "duration_s": 1.0, "sample_rate": 8000, "channels": 1, "seconds": 0.1, "checkpoint": "a.pt",
           "queries": ["dog"], "outputs": [f"{out}/rec_001/dog.flac", f"{out}/rec_001/residual.flac"]}
    write_manifest(str(out), [row])
    (out / "_job.json").write_text(json.dumps(job))
    assert set(run_into(out, "jan")) == {"rec_001.wav"}  # the same input: done, skipped
    assert run_into(out, "feb") == {}  # another archive's rec_001.wav: separated, not taken for done
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert run_into(copy, "jan") == {}  # its row names the original folder's outputs
    # outputs in another folder of this OUTPUT_URI (a colliding input added since renames the folder
    # this run would pick): the recorded ones stand, nothing is separated twice
    (out / "rec_001").rename(out / "rec_001~1a2b3c4d")
    write_manifest(str(out), [{**row, "outputs": [u.replace("rec_001/", "rec_001~1a2b3c4d/") for u in row["outputs"]]}])
    assert set(run_into(out, "jan")) == {"rec_001.wav"}


def test_rows_of_inputs_outside_this_listing_are_kept_and_resigned_urls_are_the_same_input(tmp_path):
    """An archive run in parts into one OUTPUT_URI lost the other parts' rows (and redid their model
    work next time); a list of presigned URLs signed again (they expire) redid every input."""
    from clipsep_ray.batch.archive import _resume, write_manifest
    from clipsep_ray.batch.inputs import assign_output_dirs

    job = {"checkpoint": "a.pt", "checkpoint_sha256": "ab12", "queries": ["dog"], "format": "flac"}
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "dog.flac").write_bytes(b"x")
    row = {"input": "https://host/bkt/a.wav?X-Amz-Signature=aaaa", "relative_path": "a.wav", "status": "done",
           "error": "", "duration_s": 1.0, "sample_rate": 8000, "channels": 1, "seconds": 0.1, "checkpoint": "a.pt",
           "queries": ["dog"], "outputs": [f"{out}/a/dog.flac"]}
    write_manifest(str(out), [row])
    (out / "_job.json").write_text(json.dumps(job))
    other = assign_output_dirs([(f"{tmp_path}/in/b.wav", "b.wav", None)])
    done, kept = _resume(str(out), job, other, False, None, print)
    assert done == {} and kept == {"a.wav": row}
    resigned = assign_output_dirs([("https://host/bkt/a.wav?X-Amz-Signature=bbbb", "a.wav", None)])
    done, kept = _resume(str(out), job, resigned, False, None, print)
    assert set(done) == {"a.wav"} and kept == {}


def test_schemes_are_case_insensitive_and_double_colons_are_names(tmp_path):
    """"FILE:///x" wrote under the current folder and "S3://b/k" into a bucket named "S3:" once the
    filesystem came from the protocol; "::" is part of a local name, not an fsspec chain."""
    assert storage.normalize_uri("S3://b/k") == "s3://b/k" and storage.url_to_fs("FILE:///x/y")[1] == "/x/y"
    target = tmp_path / "10::30 talk" / "dog.flac"
    storage.write_bytes(str(target), b"x")
    assert target.read_bytes() == b"x" and storage.exists(f"file://{target}")
    assert storage.read_bytes(f"FILE://{target}") == b"x"


def test_finished_rows_are_recorded_and_shown_while_a_long_file_still_runs(tmp_path):
    """The manifest and the progress line waited for the next row: rows done before an hours-long
    file were neither written (a kill lost them) nor shown. The ETA counted files, not bytes."""
    import time

    from clipsep_ray.batch.archive import _Progress, _Recorder, read_manifest
    from clipsep_ray.batch.inputs import ArchiveInput

    todo = [ArchiveInput(f"/in/{n}.wav", f"{n}.wav", n, size) for n, size in (("big", 3000), ("a", 10), ("b", 10))]
    lines = []
    progress = _Progress(todo, lines.append)
    row = {"input": "/in/big.wav", "relative_path": "big.wav", "status": "done", "error": "", "duration_s": 3600.0,
           "sample_rate": 8000, "channels": 1, "outputs": [], "seconds": 1.0, "checkpoint": "c", "queries": ["q"]}
    kept = {"old.wav": {**row, "input": "/in/old.wav", "relative_path": "old.wav"}}
    with _Recorder(str(tmp_path), {}, kept, None, progress, every=0.3) as recorder:
        progress.t0 = time.time() - 100  # 100 s spent on the first file
        recorder.add(row, 3600.0)
        recorder.add({**row, "input": "/in/a.wav", "relative_path": "a.wav"}, 12.0)  # within 2 s: not shown yet
        time.sleep(2.5)  # no further row arrives
        assert {r["relative_path"] for r in read_manifest(str(tmp_path))} == {"big.wav", "a.wav", "old.wav"}
    assert [line.split(" files")[0] for line in lines] == ["[archive] 1/3", "[archive] 2/3"]
    assert lines[0].endswith("ETA 1 s")  # 10 of 3020 bytes left: by files it said 200 s
