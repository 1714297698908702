"""Fixtures for tests that need a local Ray cluster and an S3-protocol server.

``s3_server`` (session): moto's server mode on 127.0.0.1 on a free port, fake
credentials and ``AWS_ENDPOINT_URL`` in the environment (set before Ray starts, so
Ray's workers inherit them); ``s3_bucket`` makes a fresh bucket with boto3 (s3fs's
mkdir fails against moto). ``ray_local`` (module): ``ray.init`` with 2 CPUs and a small
object store, token auth off, shut down after the module. ``tiny_checkpoint`` (module): a small
random-weight CLIPSep checkpoint.
"""
from __future__ import annotations

import os
import socket
import uuid

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def make_bucket(self, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield S3Server(endpoint)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        try:
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
        except ImportError:
            pass


@pytest.fixture
def s3_bucket(s3_server):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3_server.make_bucket()


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """A local Ray cluster for one test module (the S3 environment is set first)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A width-4 ``tiny`` CLIPSep checkpoint with random weights (larger query projections so
    queries give visibly different masks); synth-clip ships with the package, so every Ray
    worker can build it."""
    import torch

    from clipsep_ray.config import load_config
    from clipsep_ray.models.checkpoint import save_checkpoint
    from clipsep_ray.models.registry import build_model

    cfg = load_config("tiny", ["query.clip_pretrained=", "inference.precision=fp32", "model.unet_width=4"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    torch.nn.init.normal_(model.query_proj.weight, 0, 0.5)
    return save_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "model.pt"), model, cfg)


def training_rows(n: int, corrupt=frozenset(), sr: int = 8000, dim: int = 128):
    """Shard rows of 10 s clips: a class-specific tone + noise (4 classes), per-frame embeddings
    near a class centre; rows in ``corrupt`` hold bytes that are not FLAC."""
    import pyarrow as pa

    from clipsep_ray.data import schema

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, dim)).astype(np.float32) * 3
    rows = []
    for i in range(n):
        k = i % 4
        t = np.arange(10 * sr) / sr
        wave = (0.4 * np.sin(2 * np.pi * (200 + 300 * k) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
        audio = b"corrupt flac bytes" if i in corrupt else schema.encode_audio(wave, sr)
        emb = (centres[k] + 0.1 * rng.standard_normal((10, dim))).astype(np.float32)
        rows.append({"clip_id": schema.clip_id(f"synthetic://{i}", 0.0), "source_uri": f"synthetic://{i}",
                     "start_s": 0.0, "audio": audio, "sample_rate": sr, "num_samples": 10 * sr, "frames": [],
                     "fps": 1.0, "label": f"class{k}", "image_embeddings": emb.tolist(), "embedding_model": "test"})
    return pa.Table.from_pylist(rows, schema=schema.SHARD_SCHEMA)
