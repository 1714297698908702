"""Jobs on a real multi-node Ray cluster on this machine (``cluster/local.py``: a CPU head and 2
worker nodes, each a separate ``ray start`` with its own ports and temp dir), submitted through
the Jobs API with ``cluster/runtime_env.yaml``, reading from and writing to the local S3 server.

Each worker node has 2 logical CPUs and the training job asks 2 CPUs per Ray Train worker, so the
2 workers can only be placed on 2 different worker nodes (the head's 1 CPU runs the Ray Data
tasks), as one GPU per worker places them on a GPU cluster. Killing one of those nodes mid-run and
starting a replacement (what KubeRay does for a lost pod) must resume the run from its last
checkpoint; the run's placement is read from the cluster's State API (the workers' actors and
their node ids), not from anything the job says about itself.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import pytest
import yaml

from clipsep_ray.data import schema
from tests.ray.conftest import training_rows

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCAL = [sys.executable, os.path.join(REPO, "cluster", "local.py")]
STEPS, EVERY = 16, 4


def _local(*args: str) -> dict:
    out = subprocess.run([*LOCAL, *args], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, f"cluster/local.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def cluster(s3_server):
    """head (1 CPU, no GPU) + w1, w2 (2 CPUs each); the S3 environment is inherited by every node."""
    from ray.job_submission import JobSubmissionClient

    d = tempfile.mkdtemp(prefix="crl", dir="/tmp")  # short: Ray's Unix socket paths live under it
    try:
        state = _local("start", "--dir", d, "--workers", "2", "--head-cpus", "1", "--worker-cpus", "2",
                       "--object-store-mb", "200")
        assert len({n["temp_dir"] for n in state["nodes"].values()}) == 3
        ports = [p for n in state["nodes"].values() for p in n["ports"].values()]
        assert len(ports) == len(set(ports)), "two nodes share a port"
        yield {"dir": d, "client": JobSubmissionClient(state["dashboard"]), **state}
    finally:
        subprocess.run([*LOCAL, "stop", "--dir", d], capture_output=True, timeout=240)
        shutil.rmtree(d, ignore_errors=True)


def _runtime_env() -> dict:
    with open(os.path.join(REPO, "cluster", "runtime_env.yaml")) as f:
        env = yaml.safe_load(f)
    return {**env, "working_dir": REPO}  # "." is the submitter's directory; the test's may differ


def _wait(client, job: str, timeout_s: float, until=None):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = client.get_job_status(job)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        if until is not None and until():
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job} still {client.get_job_status(job)} after {timeout_s} s:\n"
                         f"{client.get_job_logs(job)[-4000:]}")


def _train_workers(dashboard: str) -> list[dict]:
    """Every Ray Train worker actor the cluster has seen (alive and dead), with its node id."""
    with urllib.request.urlopen(f"{dashboard}/api/v0/actors?limit=10000&detail=1", timeout=10) as r:
        actors = json.load(r)["data"]["result"]["result"]
    return [a for a in actors if a["class_name"] == "RayTrainWorker"]


def _checkpoints(s3, bucket: str, prefix: str) -> list[int]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    return sorted({int(k.split("step_")[1][:8]) for k in keys if "/step_" in k and k.endswith("/model.pt")})


def _registered(s3, bucket: str, prefix: str) -> int:
    """The step of the last checkpoint Ray Train has registered (0 when none): what a new worker
    group resumes from. A checkpoint's files reach storage before that (rank 0 uploads, then every
    rank reports, then the controller registers it and writes its snapshot), so a node lost in
    between resumes from the one before, although the newer files are listed."""
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}checkpoint_manager_snapshot.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return 0
    latest = json.loads(body).get("latest_checkpoint_result")
    return int(latest["checkpoint_dir_name"].split("step_")[1]) if latest else 0


@pytest.fixture(scope="module")
def trained(cluster, s3_server):
    """The training job, with one worker node killed after the first checkpoint; what it left."""
    from ray.job_submission import JobStatus

    s3, bucket = s3_server.client(), s3_server.make_bucket("mn")
    table = training_rows(16)
    for i in range(2):
        schema.write_shard(table.slice(8 * i, 8), f"s3://{bucket}/train/part-{i}.parquet")
    client = cluster["client"]
    job = client.submit_job(runtime_env=_runtime_env(), entrypoint=(
        f"python jobs/train.py --config tiny --data s3://{bucket}/train --storage s3://{bucket}/runs --name mn "
        f"--workers 2 run.cpus_per_worker=2 run.max_failures=2 model.unet_width=4 audio.clip_samples=8191 "
        f"train.batch_size=4 train.max_steps={STEPS} train.checkpoint_every={EVERY} train.log_every={EVERY} "
        "data.val_clips=0 data.min_rows_per_pass=64 train.shuffle_buffer=0 query.clip_pretrained= "
        "inference.precision=fp32"))
    status = _wait(client, job, 480, until=lambda: _registered(s3, bucket, "runs/mn/") > 0)
    assert status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED), \
        f"the run ended ({status}) before its first checkpoint was seen:\n{client.get_job_logs(job)[-3000:]}"
    first = [a for a in _train_workers(cluster["dashboard"]) if a["state"] == "ALIVE"]
    names = {v["node_id"]: k for k, v in _local("status", "--dir", cluster["dir"])["nodes"].items()}
    victim = names[first[-1]["node_id"]]
    registered = _registered(s3, bucket, "runs/mn/")  # it can only grow until the kill
    before_kill = _checkpoints(s3, bucket, "runs/mn/")
    _local("kill", "--dir", cluster["dir"], victim)
    _local("add", "--dir", cluster["dir"])  # the replacement node, as KubeRay recreates a lost pod
    status = _wait(client, job, 480)
    logs = client.get_job_logs(job)
    errors = "\n".join(line for line in logs.splitlines() if "Error" in line)[-4000:]
    assert status == JobStatus.SUCCEEDED, f"train job ended {status}:\n{errors}\n...\n{logs[-3000:]}"
    summary = json.loads(s3.get_object(Bucket=bucket, Key="runs/mn/summary.json")["Body"].read())
    print(f"[multinode] first workers on {sorted(names[a['node_id']] for a in first)}, killed {victim} with "
          f"checkpoints {before_kill} ({registered} registered), resumed from step {summary['metrics']['start_step']}")
    return {"first": first, "victim": victim, "names": names, "before_kill": before_kill, "registered": registered,
            "summary": summary,
            "workers": _train_workers(cluster["dashboard"]), "bucket": bucket, "logs": logs}


def test_train_job_places_two_workers_on_two_nodes(trained):
    first, names = trained["first"], trained["names"]
    assert len(first) == 2, first
    nodes = {a["node_id"] for a in first}
    assert len(nodes) == 2, f"both Ray Train workers ran on one node: {first}"
    assert {names[n] for n in nodes} <= {"w1", "w2"}, "a training worker was placed on the head"
    assert trained["summary"]["latest_checkpoint"].startswith(f"s3://{trained['bucket']}/runs/mn/")
    assert f"step_{STEPS:08d}" in trained["summary"]["latest_checkpoint"]


def test_killed_node_resumes_from_last_checkpoint(trained):
    metrics = trained["summary"]["metrics"]
    assert metrics["step"] == STEPS
    # The final report's start_step is where the last worker group started: the checkpoint Ray Train
    # had registered when the node died (or a later one registered before the group noticed), never
    # step 0. Files of a newer checkpoint may already be listed: they count once registered.
    assert metrics["start_step"] >= trained["registered"] > 0, (metrics, trained["registered"],
                                                                 trained["before_kill"])
    assert trained["registered"] in trained["before_kill"]
    assert metrics["start_step"] % EVERY == 0 and metrics["start_step"] < STEPS
    later = [a for a in trained["workers"] if a["actor_id"] not in {f["actor_id"] for f in trained["first"]}]
    assert len(later) >= 2, "no new worker group was started after the node was killed"
    victim_id = next(n for n, name in trained["names"].items() if name == trained["victim"])
    assert victim_id not in {a["node_id"] for a in later}


def test_archive_job_on_the_cluster(cluster, trained, s3_server):
    import soundfile as sf

    from ray.job_submission import JobStatus

    s3, bucket = s3_server.client(), trained["bucket"]
    sr, rng = 8000, np.random.default_rng(0)
    for name in ("a.wav", "sub/b.wav"):
        path = os.path.join(cluster["dir"], name.replace("/", "_"))
        sf.write(path, (0.3 * rng.standard_normal(3 * sr)).astype(np.float32), sr)
        s3.upload_file(path, bucket, f"archive/{name}")
    ckpt = trained["summary"]["latest_checkpoint"]
    client = cluster["client"]
    job = client.submit_job(runtime_env=_runtime_env(), entrypoint=(
        f"python jobs/separate_archive.py s3://{bucket}/archive s3://{bucket}/stems --checkpoint {ckpt} "
        "--query 'dog barking' --actors 2 --cpus-per-actor 0.5 --task-cpus 0.25"))
    status = _wait(client, job, 240)
    assert status == JobStatus.SUCCEEDED, f"archive job ended {status}:\n{client.get_job_logs(job)[-4000:]}"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="stems/")["Contents"]}
    for stem in ("a", "sub/b"):
        assert {f"stems/{stem}/dog_barking.flac", f"stems/{stem}/residual.flac"} <= keys, keys
    assert "stems/_manifest.csv" in keys
