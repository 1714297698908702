"""Data-plane throughput: training-row preparation and video ingest.

Row preparation (``paper`` preset rows: 16 kHz, 65,535-sample windows, 512-d queries) is
measured from synthetic shards (10 s clips, 10 JPEG frames, 10 x 512 embeddings) on local
disk and on a local moto S3 server, two ways:

* ``inproc``: one process reads the shards with pyarrow and prepares every row
  (``RowPrep.prepare``): clips/s on one core;
* ``ray``: ``training_dataset`` + ``iter_training_batches`` (batch 32, shuffle buffer 64)
  on a local Ray cluster of ``--cpus`` CPUs: clips/s in total and per core.

Ingest decodes synthetic videos (``--video-seconds`` each, 320x240 at 25 fps, 44.1 kHz
stereo AAC) to 16 kHz mono + 1 fps 224x224 JPEG frames, in one process and as the Ray
job: video seconds decoded per wall second, per core.

    python benchmarks/bench_data.py                 # defaults: 512 rows, 8 x 30 s videos, 2 CPUs
    python benchmarks/bench_data.py --json out.json

Numbers on a shared machine are noisy: run it when nothing else is busy.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from clipsep_ray.config import load_config  # noqa: E402
from clipsep_ray import storage  # noqa: E402
from clipsep_ray.data import schema  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[object, str]:
    """moto's S3 server in its own process (in this one it would share our GIL)."""
    import subprocess
    import urllib.request

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint})
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    return server, endpoint


def synthetic_rows(n: int, sr: int = 16000, seconds: int = 10, d: int = 512, seed: int = 0) -> pa.Table:
    """Clips that compress like real audio (tones + noise) and real-sized JPEG frames."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    t = np.arange(sr * seconds) / sr
    frames = []
    for k in range(seconds):
        img = (rng.random((224, 224, 3)) * 60 + np.linspace(0, 180, 224)[None, :, None]).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        frames.append(buf.getvalue())
    rows = []
    for i in range(n):
        f0 = 100 + 40 * (i % 30)
        wave = 0.3 * np.sin(2 * np.pi * f0 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2 \
            + 0.05 * rng.standard_normal(len(t))
        src = f"bench://video{i:05d}.mp4"
        rows.append({"clip_id": schema.clip_id(src, 0.0), "source_uri": src, "start_s": 0.0,
                     "audio": schema.encode_audio(wave.astype(np.float32), sr), "sample_rate": sr,
                     "num_samples": len(t), "frames": frames, "fps": 1.0, "label": None,
                     "image_embeddings": rng.standard_normal((seconds, d)).astype(np.float32).tolist(),
                     "embedding_model": "bench"})
    return pa.Table.from_pylist(rows, schema=schema.SHARD_SCHEMA)


def write_shards(table: pa.Table, uri: str, rows_per_shard: int) -> int:
    total = 0
    for k, start in enumerate(range(0, table.num_rows, rows_per_shard)):
        total += schema.write_shard(table.slice(start, rows_per_shard), storage.join_uri(uri, f"part-{k:04d}.parquet"))
    return total


def bench_inproc(uri: str, cfg) -> dict:
    from clipsep_ray.data.shards import READ_COLUMNS, RowPrep

    prep = RowPrep.from_config(cfg)
    rng = np.random.default_rng(0)
    t0, n = time.perf_counter(), 0
    for f in schema.list_shards(uri):
        out, fails = prep.prepare(schema.read_shard(f, READ_COLUMNS), "train", rng)
        n += len(out["clip_index"])
        assert not fails, fails[:1]
    wall = time.perf_counter() - t0
    return {"clips": n, "wall_s": round(wall, 3), "clips_per_s_per_core": round(n / wall, 1)}


def bench_ray(uri: str, cfg, cpus: int, epochs: int = 3) -> dict:
    from clipsep_ray.data.shards import PrepStats, iter_training_batches, training_dataset

    stats = PrepStats()
    ds = training_dataset(uri, cfg, split_seed=0, stats=stats)
    out = {}
    for epoch in range(epochs):  # the first epoch includes task start-up
        t0, n = time.perf_counter(), 0
        for batch in iter_training_batches(ds, batch_size=32, shuffle_buffer=64, device="cpu", drop_last=False):
            n += batch["audio"].shape[0]
        wall = time.perf_counter() - t0
        out[f"epoch{epoch}"] = {"clips": n, "wall_s": round(wall, 3), "clips_per_s": round(n / wall, 1),
                                "clips_per_s_per_core": round(n / wall / cpus, 1)}
    out["skipped"] = stats.snapshot()["rows_skipped"]
    return out


def make_video(path: str, seconds: float, seed: int) -> None:
    import av

    rng = np.random.default_rng(seed)
    c = av.open(path, "w")
    try:
        vs = c.add_stream("h264", rate=25)
    except Exception:
        vs = c.add_stream("mpeg4", rate=25)
    vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
    a = c.add_stream("aac", rate=44100)
    a.layout = "stereo"
    base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    for i in range(int(seconds * 25)):
        img = np.roll(base, i * 3, axis=1)
        for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in vs.encode():
        c.mux(p)
    n = int(seconds * 44100)
    t = np.arange(n) / 44100
    wav = np.stack([0.3 * np.sin(2 * np.pi * 300 * t), 0.3 * np.sin(2 * np.pi * 500 * t)]).astype(np.float32)
    for i in range(0, n, 1024):
        fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[:, i:i + 1024]), format="fltp", layout="stereo")
        fr.sample_rate, fr.pts = 44100, i
        for p in a.encode(fr):
            c.mux(p)
    for p in a.encode():
        c.mux(p)
    c.close()


def bench_ingest(video_dir: str, out_uri: str, cpus: int, files_per_task: int) -> dict:
    """In one process, then the Ray job twice: cold (fresh workers import torch/PyAV) and warm."""
    from clipsep_ray.data.ingest import IngestOptions, extract_clips, ingest

    opts = IngestOptions(sample_rate=16000, clip_seconds=10.0, files_per_task=files_per_task)
    files = sorted(os.path.join(video_dir, f) for f in os.listdir(video_dir))
    t0, secs, clips = time.perf_counter(), 0.0, 0
    for f in files:
        rows, s = extract_clips(f, f, None, opts)
        secs, clips = secs + s, clips + len(rows)
    inproc = time.perf_counter() - t0
    out = {"videos": len(files), "video_seconds": round(secs, 1), "clips": clips,
           "inproc": {"wall_s": round(inproc, 3), "video_s_per_s_per_core": round(secs / inproc, 1)}}
    for run in ("ray_cold", "ray_warm"):
        res = ingest(video_dir, out_uri, opts, overwrite=True)
        assert res["clips_written"] == clips and not res["errors"], res
        out[run] = {"wall_s": res["wall_s"], "video_s_per_s": round(res["video_seconds"] / res["wall_s"], 1),
                    "video_s_per_s_per_core": round(res["video_seconds"] / res["wall_s"] / cpus, 1)}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=512, help="synthetic paper-preset clips")
    p.add_argument("--rows-per-shard", type=int, default=64)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--video-seconds", type=float, default=30.0)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--object-store-mb", type=int, default=300)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import ray

    cfg = load_config("paper")
    server, endpoint = start_moto()  # before Ray starts: workers inherit the S3 environment
    ray.init(num_cpus=args.cpus, object_store_memory=args.object_store_mb << 20, include_dashboard=False,
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "ray_cpus": args.cpus, "preset": "paper", "clip_samples": cfg.audio.clip_samples,
               "sample_rate": cfg.audio.sample_rate}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
            t0 = time.perf_counter()
            table = synthetic_rows(args.rows)
            local, s3 = os.path.join(tmp, "shards"), "s3://bench/shards"
            nbytes = write_shards(table, local, args.rows_per_shard)
            write_shards(table, s3, args.rows_per_shard)
            results["shards"] = {"rows": args.rows, "files": len(schema.list_shards(local)),
                                 "mb": round(nbytes / 2**20, 1), "kb_per_row": round(nbytes / args.rows / 1024, 1),
                                 "setup_s": round(time.perf_counter() - t0, 1)}
            del table
            for name, uri in (("local", local), ("s3_moto", s3)):
                results[f"prep_{name}"] = {"inproc": bench_inproc(uri, cfg), "ray": bench_ray(uri, cfg, args.cpus)}
                print(name, json.dumps(results[f"prep_{name}"]), flush=True)
            vdir = os.path.join(tmp, "videos")
            os.makedirs(vdir)
            for i in range(args.videos):
                make_video(os.path.join(vdir, f"v{i:03d}.mp4"), args.video_seconds, i)
            results["ingest"] = bench_ingest(vdir, os.path.join(tmp, "ingested"), args.cpus,
                                             files_per_task=max(1, args.videos // (2 * args.cpus)))
            print("ingest", json.dumps(results["ingest"]), flush=True)
    finally:
        ray.shutdown()
        server.terminate()
        server.wait()
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
