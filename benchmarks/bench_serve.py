"""Load test of the Serve application on 127.0.0.1: a bounded load generator (a fixed number of
requests per level, stopping by itself).

For 5 s clips (16 kHz WAV, one query, zip answer with the residual) it measures requests/s and
p50/p95/p99 latency at 1, 8 and 32 concurrent clients, with batching on (``--max-batch-size``)
and off (max_batch_size 1: each request's windows still go through the U-Net together) in the
same run: both applications are deployed side by side (an idle one costs nothing) and each
client level runs on, off, on, off, ... (``--rounds``), so drift on the box falls on both alike;
the table gives each level's median over its rounds. Then the time of a re-query (a new query on
the same upload, from cached features) against the first request's, whose query is new as well
(both pay for encoding one text query).

Usage: python benchmarks/bench_serve.py [--preset tiny] [--requests 16 64 128] [--clients 1 8 32]
       [--max-batch-size 16] [--batch-wait-s 0.01] [--rounds 3] [--json benchmarks/results/serve_cpu.json]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_separate import machine, test_signal  # noqa: E402

SR, SECONDS = 16000, 5.0


def _wav(wave: np.ndarray, sr: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV")
    return buf.getvalue()


def percentiles(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000
    return {f"p{q}": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)}


async def load(base: str, data: bytes, clients: int, total: int, prefix: str = "") -> dict:
    """``total`` requests from ``clients`` concurrent clients; latencies and failures."""
    import httpx

    lat: list[float] = []
    failures: list[str] = []
    todo = iter(range(total))

    async def client(http: httpx.AsyncClient):
        for i in todo:
            t0 = time.perf_counter()
            r = await http.post(f"{prefix}/v1/separate", files={"file": ("clip.wav", data)},
                                data={"query": [f"sound {i % 4}"]})
            if r.status_code == 200:
                lat.append(time.perf_counter() - t0)
            else:
                failures.append(f"{r.status_code}: {r.text[:200]}")

    async with httpx.AsyncClient(base_url=base, timeout=300, limits=httpx.Limits(max_connections=clients)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "requests": total, "ok": len(lat), "failed": len(failures),
            "failures": failures[:3], "rps": round(len(lat) / wall, 2), **percentiles(lat)}


async def requery(base: str, data: bytes, repeats: int, prefix: str = "") -> dict:
    import httpx

    firsts, agains, stages = [], [], {"first": [], "requery": []}
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        for i in range(repeats):
            t0 = time.perf_counter()
            r = await http.post(f"{prefix}/v1/separate", files={"file": ("clip.wav", data)}, data={"query": [f"dog barking {i}"]})
            firsts.append(time.perf_counter() - t0)
            sid = r.headers["x-separation-id"]
            t0 = time.perf_counter()
            r2 = await http.post(f"{prefix}/v1/separations/{sid}", json={"queries": [f"rain {i}"]})
            agains.append(time.perf_counter() - t0)
            assert r.status_code == r2.status_code == 200, (r.text, r2.text)
            stages["first"].append(server_timing(r.headers.get("server-timing", "")))
            stages["requery"].append(server_timing(r2.headers.get("server-timing", "")))
    first, again = float(np.median(firsts)), float(np.median(agains))
    return {"first_ms": round(first * 1000, 1), "requery_ms": round(again * 1000, 1),
            "ratio": round(again / first, 3), "repeats": repeats,
            # medians of the Server-Timing stages (ms); "model" is the ingress's whole wait for the replica
            "stages_ms": {kind: {k: round(float(np.median([t[k] for t in ts if k in t])), 1) for k in ts[0]}
                          for kind, ts in stages.items() if ts and ts[0]}}


def server_timing(header: str) -> dict[str, float]:
    """``Server-Timing: decode;dur=1.2, model;dur=30.5`` -> {"decode": 1.2, "model": 30.5}."""
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        if name and rest.startswith("dur="):
            out[name] = float(rest[4:])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, nargs="+", default=[16, 64, 128], help="requests per client level")
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--batch-wait-s", type=float, default=0.01)
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPUs of the model replica")
    ap.add_argument("--num-gpus", type=float, default=0.0,
                    help="GPUs for the model replicas, shared by the two applications (with --device cuda)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--ingress-replicas", type=int, default=1, help="HTTP replicas (decode, encode) per application")
    ap.add_argument("--requery-repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="on/off alternations per client level")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import socket

    import torch
    from ray import serve

    from clipsep_ray.config import load_config
    from clipsep_ray.models.checkpoint import save_checkpoint
    from clipsep_ray.models.registry import build_model
    from clipsep_ray.runtime import init_ray
    from clipsep_ray.serve.app import build_app

    cfg = load_config(args.preset, ["query.clip_pretrained="])
    torch.manual_seed(0)
    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    ckpt = save_checkpoint(os.path.join(tmp, "model.pt"), build_model(cfg.model), cfg)  # speed needs no training
    data = _wav(test_signal(SR, SECONDS), SR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Both applications live side by side: 2 x (replica + ingress) logical CPUs, whatever the
    # box has; only the one under load uses the cores.
    need = 2 * (args.num_cpus + 0.5 * args.ingress_replicas) + 0.5
    init_ray(num_cpus=max(os.cpu_count() or 2, int(np.ceil(need))), log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    out = {"machine": machine(), "preset": args.preset, "clip_s": SECONDS, "input_sr": SR,
           "ingress_replicas": args.ingress_replicas, "batch_wait_s": args.batch_wait_s, "rounds": args.rounds,
           "runs": [], "rounds_raw": []}
    sizes = {"on": args.max_batch_size, "off": 1}
    try:
        for mode, size in sizes.items():
            # --num-gpus is what the benchmark may use: the two applications' replicas share it (a
            # whole GPU each left the second unschedulable on a 1-GPU machine, and serve.run waits forever).
            serve.run(build_app({"checkpoint": ckpt, "device": args.device, "num_cpus": args.num_cpus,
                                 "num_gpus": args.num_gpus / len(sizes), "ingress_cpus": 0.5,
                                 "ingress_replicas": args.ingress_replicas,
                                 "max_batch_size": size, "batch_wait_s": args.batch_wait_s,
                                 "max_ongoing_requests": max(8, 2 * args.max_batch_size),
                                 "max_queued_requests": 256}), name=mode, route_prefix=f"/{mode}")
            asyncio.run(load(base, data, 1, 3, f"/{mode}"))  # warm-up: first calls allocate
        import httpx

        for clients, total in zip(args.clients, args.requests):
            for rnd in range(args.rounds):
                for mode in sizes:
                    row = {"batching": mode, "round": rnd, **asyncio.run(load(base, data, clients, total, f"/{mode}"))}
                    out["rounds_raw"].append(row)
                    print(json.dumps(row), flush=True)
            for mode in sizes:
                rows = [r for r in out["rounds_raw"] if r["batching"] == mode and r["clients"] == clients]
                merged = {"batching": mode, "max_batch_size": sizes[mode], "clients": clients,
                          "requests": sum(r["requests"] for r in rows), "failed": sum(r["failed"] for r in rows),
                          **{k: round(float(np.median([r[k] for r in rows])), 2 if k == "rps" else 1)
                             for k in ("rps", "p50", "p95", "p99")},
                          "rps_min": min(r["rps"] for r in rows), "rps_max": max(r["rps"] for r in rows),
                          "batches": httpx.get(f"{base}/{mode}/v1/info", timeout=60).json()["batching"]}
                out["runs"].append(merged)
        out["requery"] = asyncio.run(requery(base, data, args.requery_repeats, "/on"))
        print(json.dumps(out["requery"]), flush=True)
    finally:  # what was measured is kept, also when a time limit ends the run (Ray exits on SIGTERM)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1)
        serve.shutdown()
    print("| batching | clients | requests | failed | req/s (min-max) | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in out["runs"]:
        print(f"| {r['batching']} | {r['clients']} | {r['requests']} | {r['failed']} | {r['rps']} "
              f"({r['rps_min']}-{r['rps_max']}) | {r['p50']} | {r['p95']} | {r['p99']} |")
    for c in args.clients:
        on, off = ([r for r in out["runs"] if r["clients"] == c and r["batching"] == m][0] for m in sizes)
        print(f"{c} clients: batching {on['rps'] / off['rps']:.2f}x req/s, p50 {on['p50'] - off['p50']:+.0f} ms")
    rq = out["requery"]
    print(f"re-query {rq['requery_ms']} ms vs first request {rq['first_ms']} ms ({rq['ratio']:.0%})")
    for kind, st in rq.get("stages_ms", {}).items():
        print(f"  {kind} stages (Server-Timing, ms): " + ", ".join(f"{k} {v}" for k, v in st.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
