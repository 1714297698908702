"""The ``jobs/*.py`` entry points run as Ray jobs on an existing cluster, submitted through the
Jobs API with the repository as working directory (``ray job submit --working-dir .``).

A job's driver finds its cluster through ``RAY_ADDRESS``; joining an existing cluster with
``num_cpus`` set is refused by Ray, which is the failure this guards against.
"""
from __future__ import annotations

import glob
import json
import os
import time

import pytest

from clipsep_ray.data import schema
from tests.ray.conftest import _free_port, training_rows

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with its job server (the dashboard), as ``ray start --head`` gives."""
    import ray
    from ray.job_submission import JobSubmissionClient

    if ray.is_initialized():
        ray.shutdown()
    port = _free_port()
    ray.init(num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=port, log_to_driver=False, configure_logging=False)
    client = None
    for _ in range(60):  # the job server answers a few seconds after the head starts
        try:
            client = JobSubmissionClient(f"http://127.0.0.1:{port}")
            break
        except Exception:
            time.sleep(1)
    assert client is not None, "the Ray job server did not come up"
    try:
        yield client
    finally:
        ray.shutdown()


def _submit(client, entrypoint: str, timeout_s: float = 300) -> str:
    from ray.job_submission import JobStatus

    env = {k: os.environ[k] for k in ("RAY_AUTH_MODE", "HF_HUB_OFFLINE") if k in os.environ}
    runtime_env = {"working_dir": REPO, "env_vars": env,
                   "excludes": [".git", "demo-out", "runs", "benchmarks/results", "*.egg-info"]}
    for attempt in range(60):
        try:
            job = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as exc:
            # The head's job agent registers some seconds after its job server answers (on a
            # loaded 2-core box the first submission got "No available agent to submit job").
            if "No available agent" not in str(exc) or attempt == 59:
                raise
            time.sleep(1)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = client.get_job_status(job)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, f"{entrypoint} ended {status}:\n{logs[-4000:]}"
    return logs


def test_train_then_evaluate_jobs_on_a_running_cluster(cluster, tmp_path):
    table = training_rows(16)
    schema.write_shard(table.slice(0, 12), str(tmp_path / "train" / "part-0.parquet"))
    schema.write_shard(table.slice(12, 4), str(tmp_path / "test" / "part-0.parquet"))
    _submit(cluster, f"python jobs/train.py --config tiny --data {tmp_path}/train --storage {tmp_path}/runs "
                            "--name job --workers 1 model.unet_width=4 audio.clip_samples=8191 train.batch_size=4 "
                            "train.max_steps=2 train.checkpoint_every=2 data.val_clips=0 train.shuffle_buffer=0")
    summary = json.loads((tmp_path / "runs" / "job" / "summary.json").read_text())
    assert summary["run"] == "job" and "step_00000002" in summary["latest_checkpoint"]
    (ckpt,) = glob.glob(str(tmp_path / "runs" / "job" / "*step_00000002*" / "model.pt"))

    # On a cluster, --engine auto evaluates on Ray Data (scoring actors), joining through RAY_ADDRESS.
    _submit(cluster, f"python jobs/evaluate.py --checkpoint {os.path.dirname(ckpt)} --data {tmp_path}/test "
                     f"--out {tmp_path}/eval --actors 1 --device cpu")
    rows = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {r["method"] for r in rows} >= {"mixture", "oracle-ibm", "CLIPSep"}
    assert all(r["n"] + r["skipped"] == 4 for r in rows)
