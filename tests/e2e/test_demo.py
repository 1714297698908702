"""The main job end to end at toy size: world -> CLIP -> ingest -> embed -> train (2 workers) ->
evaluate -> report. Sizes are tiny so CI stays fast; the real demo's quality is a benchmark."""
from __future__ import annotations

import json
import os

import pytest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    from clipsep_ray.commands import call

    out = tmp_path_factory.mktemp("demo")
    try:
        yield call("demo", ["--out", str(out), "--clips", "24", "--test-clips", "12", "--steps", "4",
                         "--clip-steps", "15", "--clip-pictures", "8", "--examples", "1",
                         "train.batch_size=4", "train.checkpoint_every=2", "train.log_every=2",
                         "model.unet_width=4", "data.val_clips=4"]), out
    finally:
        ray.shutdown()


def test_demo_writes_results_checkpoint_and_report(demo):
    result, out = demo
    rows = json.loads((out / "results.json").read_text())
    keys = {"method", "query_kind", "train_data", "sdr_mean", "sdr_sem", "sdr_median", "sdri_mean", "n", "skipped"}
    assert all(keys <= set(r) for r in rows)
    got = {(r["method"], r["query_kind"]) for r in rows}
    assert {("CLIPSep", "text"), ("CLIPSep", "image"), ("mixture", "none"), ("oracle-ibm", "none"),
            ("oracle-irm", "none")} <= got
    for r in rows:
        assert r["n"] + r["skipped"] == 12
    assert (out / "checkpoints" / "best" / "model.pt").exists()
    page = (out / "index.html").read_text()
    assert "CLIPSep" in page and "<audio" in page and ".png" in page
    timings = page.split("<h2>Stage timings</h2>")[1].split("</table>")[0]
    for stage in ("data", "train", "evaluate", "report"):
        seconds = float(timings.split(f"<tr><td>{stage}</td><td>")[1].split("<")[0])
        assert 0 <= seconds < 3600, (stage, seconds)  # durations, never a timestamp
    assert "SDRi " in page and "median over the test mixtures" in page
    ex = [p for p in (out / "examples").rglob("*") if p.suffix in (".wav", ".png")]
    assert len(ex) == 10  # mixture, estimate, residual, two references: a WAV and a picture each
    assert (out / "per_clip.csv").exists() and (out / "results.md").exists()


def test_demo_second_run_reuses_cached_stages(demo):
    result, out = demo
    from clipsep_ray.synth.videos import ensure_world

    again = ensure_world(os.path.join(out, "cache", "world-clean"), clips=24, seed=0, split="clean", val_clips=12,
                         test_clips=12)
    assert again["cached"]
