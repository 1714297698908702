"""What a user's terminal shows during `clipsep-ray train` (issue 14): each step report once,
and no flood of Ray Train warnings. Runs the real command in its own process, so Ray starts the
way it does for users (``runtime.init_ray``, worker output forwarded to the driver)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter

from clipsep_ray.data import schema
from tests.ray.conftest import training_rows

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_train_terminal_shows_each_report_once(tmp_path):
    table = training_rows(24)
    schema.write_shard(table.slice(0, 16), str(tmp_path / "train" / "part-0.parquet"))
    schema.write_shard(table.slice(16, 8), str(tmp_path / "val" / "part-0.parquet"))
    overrides = ["model.unet_width=4", "audio.clip_samples=8191", "train.batch_size=4", "train.max_steps=8",
                 "train.checkpoint_every=4", "train.log_every=2", "train.warmup_steps=2", "train.shuffle_buffer=0",
                 "data.val_clips=4", "inference.precision=fp32", "run.cpus_per_worker=0.5"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "clipsep_ray", "train", "--config", "tiny", "--workers", "2",
         "--data", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--storage", str(tmp_path / "runs"),
         "--name", "log", *overrides],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out)
    steps = Counter(m.group(1) for m in re.finditer(r"\[train\] step (\d+/\d+) loss", plain))
    assert steps == Counter({"2/8": 1, "4/8": 1, "6/8": 1, "8/8": 1}), steps
    reports = Counter(m.group(1) for m in re.finditer(r"\[train\] step (\d+): loss", plain))
    assert reports == Counter({"4": 1, "8": 1}), reports
    assert plain.count("Failed to query Ray Train Controller actor state") <= 1
    # Ray Train's own INFO line per report and worker ("Reporting training result N: TrainingReport(...)")
    assert "Reporting training result" not in plain
    # Output that is not a terminal gets no Ray Data progress bars (cursor movements in a log file)
    # and no progress tables logged every few seconds (runtime.quiet_progress_when_logged).
    assert "\x1b[A" not in out and "logging_progress" not in out
