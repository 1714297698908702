"""Evaluation on Ray Data gives the same mixtures and the same table as the local path,
with a corrupt row skipped and counted, from shards on the local S3 server."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from clipsep_ray.config import load_config
from clipsep_ray import storage
from clipsep_ray.data import schema

SR, D, N_CLIPS, N_CLASSES = 8000, 128, 21, 4


@pytest.fixture(scope="module")
def test_set(s3_server, tmp_path_factory):
    from clipsep_ray.models.checkpoint import save_checkpoint
    from clipsep_ray.models.registry import build_model

    rng = np.random.default_rng(1)
    centres = rng.standard_normal((N_CLASSES, D)).astype(np.float32) * 3
    rows = []
    for i in range(N_CLIPS):
        k = i % N_CLASSES
        t = np.arange(6 * SR) / SR
        wave = (0.4 * np.sin(2 * np.pi * (250 + 400 * k) * t) * (1 + np.sin(2 * np.pi * (k + 1) * t)) / 2
                + 0.03 * rng.standard_normal(t.size)).astype(np.float32)
        audio = b"not flac" if i == 7 else schema.encode_audio(wave, SR)
        emb = (centres[k] + 0.2 * rng.standard_normal((6, D))).astype(np.float32)
        rows.append({"clip_id": schema.clip_id(f"synthetic://eval/{i}", 0.0), "source_uri": f"synthetic://eval/{i}",
                     "start_s": 0.0, "audio": audio, "sample_rate": SR, "num_samples": 6 * SR, "frames": [],
                     "fps": 1.0, "label": f"class{k}", "image_embeddings": emb.tolist(), "embedding_model": "test"})
    table = pa.Table.from_pylist(rows, schema=schema.SHARD_SCHEMA)
    base = f"s3://{s3_server.make_bucket('eval')}/test"
    for p, (a, b) in enumerate([(0, 8), (8, 15), (15, N_CLIPS)]):  # several files -> several read tasks
        schema.write_shard(table.slice(a, b - a), f"{base}/part-{p}.parquet")
    labels = [f"class{k}" for k in range(N_CLASSES)]
    text = pa.table({"label": labels,
                     "embedding": pa.array(list(centres), pa.list_(pa.float32())),
                     "embedding_ensemble": pa.array(list(centres * 0.9), pa.list_(pa.float32())),
                     "prompt_template": ["a photo of {}."] * N_CLASSES, "prompt_ensemble": ["[]"] * N_CLASSES,
                     "embedding_model": ["test"] * N_CLASSES})
    buf = io.BytesIO()
    pq.write_table(text, buf)
    storage.write_bytes(storage.join_uri(base, schema.TEXT_EMBEDDINGS_NAME), buf.getvalue())

    cfg = load_config("tiny", ["model.unet_width=4", "audio.clip_samples=8191"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    torch.nn.init.normal_(model.query_proj.weight, 0.0, 0.5)  # distinct masks per query (untrained)
    ckpt = str(tmp_path_factory.mktemp("evalckpt") / "model.pt")
    save_checkpoint(ckpt, model, cfg)
    return base, ckpt


def test_ray_data_evaluation_matches_the_local_path(ray_local, test_set, tmp_path):
    from clipsep_ray.evaluation import evaluate_checkpoint

    base, ckpt = test_set
    local = evaluate_checkpoint(ckpt, base, str(tmp_path / "local"), engine="local", train_data="clean").summary
    dist = evaluate_checkpoint(ckpt, base, str(tmp_path / "ray"), engine="ray", actors=2, train_data="clean").summary
    key = [(r["method"], r["query_kind"]) for r in local]
    assert key == [("mixture", "none"), ("oracle-ibm", "none"), ("oracle-irm", "none"), ("CLIPSep", "image"),
                   ("CLIPSep", "text")]
    assert [(r["method"], r["query_kind"]) for r in dist] == key
    for a, b in zip(local, dist):
        assert a["n"] == b["n"] == N_CLIPS - 1 - a["skipped"]
        assert a["skipped"] == b["skipped"]
        assert a["rows_skipped_unreadable"] == b["rows_skipped_unreadable"] == 1  # the corrupt FLAC
        for k in ("sdr_mean", "sdr_median", "sdri_mean", "si_sdr_mean"):
            assert b[k] == pytest.approx(a[k], abs=1e-4), (a["method"], a["query_kind"], k)
    csv_local = (tmp_path / "local" / "per_clip.csv").read_text().splitlines()
    csv_ray = (tmp_path / "ray" / "per_clip.csv").read_text().splitlines()
    assert len(csv_local) == len(csv_ray) > N_CLIPS
    def rows(lines):
        return sorted(r.split(",")[:4] + [round(float(x), 3) for x in r.split(",")[4:]] for r in lines[1:])

    assert rows(csv_local) == rows(csv_ray)  # the same mixtures, scored the same, clip by clip


def test_limit_and_auto_engine(ray_local, test_set):
    from clipsep_ray.data.shards import count_shard_rows
    from clipsep_ray.evaluation import choose_engine, evaluate_checkpoint

    def wants_ray(engine, base, endpoint, threshold, limit=None):
        return choose_engine(engine, base, limit=limit, threshold=threshold, endpoint=endpoint) == "ray"

    base, ckpt = test_set
    assert count_shard_rows(base) == N_CLIPS
    assert wants_ray("auto", base, None, N_CLIPS) and not wants_ray("auto", base, None, N_CLIPS + 1)
    with pytest.raises(ValueError, match="engine"):
        wants_ray("sometimes", base, None, 1)
    for limit in (6, 12):  # the corrupt clip falls outside the first 6 clip ids and inside the first 12
        local = evaluate_checkpoint(ckpt, base, engine="local", limit=limit).summary
        dist = evaluate_checkpoint(ckpt, base, engine="auto", ray_threshold=1, limit=limit, actors=1).summary
        assert [r["n"] + r["skipped"] for r in dist] == [r["n"] + r["skipped"] for r in local]
        assert [round(r["sdr_mean"], 4) for r in dist] == [round(r["sdr_mean"], 4) for r in local]
        assert dist[0]["rows_skipped_unreadable"] == local[0]["rows_skipped_unreadable"]
    assert local[0]["rows_skipped_unreadable"] == 1 and local[0]["n"] == 11
    assert not wants_ray("auto", base, None, 10, limit=6)  # --limit counts toward the threshold


def test_repeated_clip_ids_are_refused_before_any_work(test_set):
    """A test set holding a clip twice (e.g. a shard copied under a second name) is an error, not a
    silently double-counted clip."""
    from clipsep_ray.evaluation.distributed import evaluate_distributed

    base, ckpt = test_set
    twice = base.rsplit("/", 1)[0] + "/twice"
    data = storage.read_bytes(f"{base}/part-0.parquet")
    for name in ("part-0.parquet", "copy-of-part-0.parquet"):
        storage.write_bytes(f"{twice}/{name}", data)
    with pytest.raises(ValueError, match=r"clip ids are not unique \(8 repeated"):
        evaluate_distributed(ckpt, twice)
