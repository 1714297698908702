"""Ray Train reliability: two CPU workers from S3 shards, checkpoints on S3, injected failure,
resume by run name, corrupt rows skipped and counted."""
from __future__ import annotations

import math
import os

import pytest

from clipsep_ray.config import load_config
from clipsep_ray.data import schema
from tests.ray.conftest import training_rows

N_CLIPS = 24


@pytest.fixture(scope="module")
def shards(s3_server):
    bucket = s3_server.make_bucket("train")
    base = f"s3://{bucket}"
    table = training_rows(N_CLIPS, corrupt={5})
    schema.write_shard(table.slice(0, 16), f"{base}/train/part-0.parquet")
    schema.write_shard(table.slice(16, 8), f"{base}/val/part-0.parquet")
    return base


def _cfg(base: str, name: str, **kw) -> object:
    over = ["model.unet_width=4", "audio.clip_samples=8191", "train.batch_size=4", "train.max_steps=6",
            "train.checkpoint_every=3", "train.log_every=2", "train.warmup_steps=2", "train.num_workers=2",
            "train.shuffle_buffer=0", f"data.train_uri={base}/train", f"data.val_uri={base}/val", "data.val_clips=4",
            "inference.precision=fp32", f"run.storage_path={base}/runs", f"run.name={name}", "run.max_failures=1"]
    return load_config("tiny", over + [f"{k}={v}" for k, v in kw.items()])


def test_two_workers_train_from_s3_and_checkpoint_there(ray_local, shards, tmp_path):
    """Also: validation every 2 steps between checkpoints every 3 (train.val_every was read by nothing)."""
    from clipsep_ray.models.checkpoint import load_checkpoint
    from clipsep_ray.train.trainer import train

    import ray.train

    class ReportLog(ray.train.UserCallback):  # local: pickled by value to the run's controller
        """Each report's step, whether it has a validation score and whether it carries a checkpoint."""

        def __init__(self, path: str):
            self.path = path

        def after_report(self, run_context, metrics, checkpoint):
            with open(self.path, "a") as f:
                f.write(f"{metrics[0]['step']} {'val_sdr' in metrics[0]} {checkpoint is not None}\n")

    log = tmp_path / "reports.txt"
    summary = train(_cfg(shards, "basic", **{"train.val_every": 2}), callbacks=[ReportLog(str(log))])
    m = summary["metrics"]
    assert m["step"] == 6 and m["start_step"] == 0
    assert log.read_text().split("\n")[:-1] == ["2 True False", "3 True True", "4 True False", "6 True True"]
    assert math.isfinite(m["loss"]) and math.isfinite(m["val_sdr"])
    assert summary["latest_checkpoint"].startswith("s3://") and "step_00000006" in summary["latest_checkpoint"]
    model, cfg, payload = load_checkpoint(summary["latest_checkpoint"])
    assert cfg.train.num_workers == 2 and payload["extra"]["step"] == 6
    # The corrupt row of the training shard was skipped and counted, never replaced.
    assert summary["data"]["rows_skipped"] >= 1
    assert any("audio" in r or "decode" in r or "FLAC" in r.lower() or "flac" in r for r in summary["data"]["reasons"])


def test_injected_failure_restarts_from_last_checkpoint(ray_local, shards, tmp_path):
    from clipsep_ray.train.trainer import train
    from clipsep_ray.train.worker import FailOnce

    cfg = _cfg(shards, "failure", **{"train.checkpoint_every": 2})
    cfg.run.storage_path = str(tmp_path / "runs")  # the failure marker lives beside a local run
    written = str(tmp_path / "runs" / "failure" / "config.yaml")

    def config_written_before_training(step, rank, world):  # a run killed mid-way had none
        assert os.path.exists(written), written

    summary = train(cfg, hooks=[FailOnce(3, str(tmp_path / "runs" / ".failure.failed")),
                                config_written_before_training])
    assert (tmp_path / "runs" / ".failure.failed").exists()  # the failure happened
    m = summary["metrics"]
    assert m["step"] == 6
    assert m["start_step"] == 2  # restarted from the step-2 checkpoint, not from zero


def test_second_run_with_same_name_resumes(ray_local, shards):
    """With a weight average: model.pt holds the average, and the resumed run continues both it and the
    raw weights (the average's update count goes on from 3 to 6)."""
    from clipsep_ray.models.checkpoint import load_checkpoint
    from clipsep_ray.train.trainer import train

    from clipsep_ray.config import ConfigError

    first = train(_cfg(shards, "resume", **{"train.max_steps": 3, "train.ema_decay": 0.9}))
    assert first["metrics"]["step"] == 3
    # Refused before Ray starts: a new learning rate was silently replaced by the optimiser state's.
    with pytest.raises(ConfigError, match=r"resumes from step_00000003.*train.lr: 0.001 -> 0.002"):
        train(_cfg(shards, "resume", **{"train.max_steps": 6, "train.ema_decay": 0.9, "train.lr": 0.002}))
    second = train(_cfg(shards, "resume", **{"train.max_steps": 6, "train.ema_decay": 0.9}))
    assert second["metrics"]["start_step"] == 3 and second["metrics"]["step"] == 6
    _, cfg, payload = load_checkpoint(second["latest_checkpoint"])
    assert cfg.train.ema_decay == 0.9 and payload["extra"]["ema_updates"] == 6


def test_same_seed_repeats_a_two_worker_run(ray_local, shards):
    """A planned pass (data.planned_pass, the default for a set this small), a seeded shuffle
    buffer and seeded mixing: two runs of one seed on 2 workers end with the same weights."""
    import torch

    from clipsep_ray.models.checkpoint import load_checkpoint
    from clipsep_ray.train.trainer import train

    weights = []
    for name in ("repeat-a", "repeat-b"):
        summary = train(_cfg(shards, name, **{"train.shuffle_buffer": 8, "train.max_steps": 4,
                                              "train.checkpoint_every": 4}))
        weights.append(load_checkpoint(summary["latest_checkpoint"])[0].state_dict())
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
