"""How many model actors an archive job starts when ``--actors`` is not given."""
from __future__ import annotations

import pytest

from clipsep_ray.batch.archive import actor_count


def count(requested=None, *, mode="fused", files=100, cpus_per_actor=1.0, task_cpus=0.5, gpus_per_actor=0.0,
          cluster_cpus=8.0, cluster_gpus=0.0, actor_mb=0.0, cluster_mb=float("inf")) -> int:
    return actor_count(requested, mode=mode, files=files, cpus_per_actor=cpus_per_actor, task_cpus=task_cpus,
                       gpus_per_actor=gpus_per_actor, cluster_cpus=cluster_cpus, cluster_gpus=cluster_gpus,
                       actor_mb=actor_mb, cluster_mb=cluster_mb)


def test_on_cpus_every_core_gets_an_actor():
    assert count() == 8
    assert count(cpus_per_actor=2.0) == 4
    assert count(cpus_per_actor=3.0) == 2  # whole actors only
    assert count(cpus_per_actor=0.5, cluster_cpus=2.0) == 4
    assert count(cluster_cpus=1.0, cpus_per_actor=2.0) == 1  # at least one (Ray then waits for room)


def test_the_staged_pipeline_keeps_room_for_a_decode_and_an_encode_task():
    assert count(mode="staged") == 7  # 8 CPUs - 2 x 0.5 for the tasks
    assert count(mode="staged", cluster_cpus=2.0, task_cpus=0.25, cpus_per_actor=0.5) == 3


def test_with_gpus_the_gpus_decide():
    assert count(mode="staged", gpus_per_actor=1.0, cluster_gpus=4.0, cluster_cpus=64.0) == 4
    assert count(mode="staged", gpus_per_actor=0.5, cluster_gpus=4.0, cluster_cpus=64.0) == 8
    assert count(mode="staged", gpus_per_actor=1.0, cluster_gpus=8.0, cluster_cpus=6.0) == 5  # CPUs too


def test_memory_caps_the_default_where_cores_outnumber_gigabytes():
    from clipsep_ray.batch.archive import PROCESS_MB, actor_memory_mb

    paper = actor_memory_mb(116 * 2**20)  # paper's weights: 116 MB; an actor peaked at 1,183 MB
    assert 1183 <= paper < 1400
    assert count(cluster_cpus=64.0, actor_mb=paper, cluster_mb=16 * 1024) == 12  # not 64 actors on 16 GB
    assert count(cluster_cpus=4.0, actor_mb=paper, cluster_mb=16 * 1024) == 4  # the cores, when memory is ample
    # staged: the decode and encode tasks' processes are kept room for as well
    assert count(mode="staged", cluster_cpus=64.0, actor_mb=paper, cluster_mb=4 * 1024) == \
        (4 * 1024 - 2 * PROCESS_MB) // paper
    assert count(cluster_cpus=64.0, actor_mb=paper, cluster_mb=512) == 1  # at least one
    assert count(6, actor_mb=paper, cluster_mb=1024) == 6  # a given count: the user's call


def test_a_given_count_is_kept_and_never_more_actors_than_inputs():
    assert count(files=3) == 3
    assert count(files=1, cluster_cpus=64.0) == 1
    assert count(2, cluster_cpus=64.0) == 2
    assert count(6, cluster_cpus=2.0) == 6  # more than the cores: the user's call
    assert count(4, files=1) == 1  # a re-run with one input left starts one model


def test_a_count_below_one_is_refused_before_any_work(tmp_path):
    from clipsep_ray.batch.archive import ArchiveError, separate_archive

    with pytest.raises(ArchiveError, match="--actors must be at least 1, not 0"):
        separate_archive(str(tmp_path / "no.pt"), ["dog"], str(tmp_path), str(tmp_path / "out"), actors=0)


def test_the_endpoint_reaches_actors_and_tasks_and_only_big_actors_get_a_thread_count():
    from clipsep_ray.batch.archive import runtime_envs

    assert runtime_envs(1.0, {}) == ({}, {})  # Ray's prestarted workers can take them
    ep = {"AWS_ENDPOINT_URL_S3": "http://minio:9000"}
    actors, tasks = runtime_envs(0.5, ep)
    assert actors["runtime_env"]["env_vars"] == ep and tasks["runtime_env"]["env_vars"] == ep
    actors, tasks = runtime_envs(4.0, ep)
    env = actors["runtime_env"]["env_vars"]
    assert env["OMP_NUM_THREADS"] == "4" and env["AWS_ENDPOINT_URL_S3"] == ep["AWS_ENDPOINT_URL_S3"]
    assert "OMP_NUM_THREADS" not in tasks["runtime_env"]["env_vars"]


def test_without_gpus_per_actor_the_actors_share_the_gpus_they_outnumber():
    from clipsep_ray.batch.archive import gpu_share

    assert gpu_share(None, None, 0) == 0.0 and gpu_share(None, 3, 0) == 0.0  # no GPUs: CPU actors
    assert gpu_share(None, None, 4) == 1.0 and gpu_share(None, 2, 4) == 1.0  # a whole GPU each
    assert gpu_share(None, 2, 1) == 0.5 and gpu_share(None, 3, 2) == 0.5  # more actors than GPUs: shared,
    assert gpu_share(None, 3, 1) == 0.3333 and 3 * gpu_share(None, 3, 1) <= 1  # and each share fits on one GPU
    assert gpu_share(0.25, 2, 1) == 0.25 and gpu_share(0.0, 2, 1) == 0.0  # the user's share is kept
