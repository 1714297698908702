"""Throughput, precision, memory and query-count cost of the separation path.

Measures, in one run on one machine, for each preset:
  plain   : the fp32 U-Net forward alone (contiguous memory, one window per call, the
            way the public implementation runs it) over the windows the path uses;
  path    : the whole path (decode, resample, STFT, warp, model, overlap-add, resample,
            encode) through ``Separator.separate_file`` with the default settings
            (bf16 where the CPU/GPU has it, channels_last, batched windows);
  path32  : the same with precision=fp32;
  sdr     : SDR of the path's estimates vs. the fp32 run's on the same mixtures;
  queries : the whole path with 8 queries vs. 1 query;
  (every timed variant is warmed up first, then the variants run in turns; medians with
  min/max are reported, with the CPU features the figures came from: benchmarks/timing.py)
  memory  : peak RSS of a child process separating a 1-minute and a long (60-minute) file.

Usage: python benchmarks/bench_separate.py [--presets tiny paper] [--seconds 60] [--long-minutes 60]
       [--checkpoint URI (a trained model, for the SDR comparison)] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from clipsep_ray.audio.io import write_audio
from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.audio.chunking import frame
from clipsep_ray.config import load_config
from clipsep_ray.metrics import bss_eval
from clipsep_ray.models.checkpoint import load_checkpoint, save_checkpoint
from clipsep_ray.models.registry import build_model
from clipsep_ray.runtime import autocast_dtype
from clipsep_ray.separate import Separator, separate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cpu_features, interleaved, machine  # noqa: E402

QUERIES = ["dog barking", "violin", "rain", "siren", "piano", "engine", "bird chirping", "church bell"]


def test_signal(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Two tones with harmonics + a noise texture: something the model must actually process."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    x = 0.2 * np.sin(2 * np.pi * 330 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
    x += 0.1 * np.sin(2 * np.pi * 880 * t + 3 * np.sin(2 * np.pi * 5 * t))
    x += 0.05 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def plain_forward_seconds(model, cfg, wave_model_rate: np.ndarray, device) -> tuple[float, int]:
    """fp32, contiguous, one window per call: the U-Net over every window the path uses."""
    fe = SpectralFrontEnd.from_config(cfg.audio).to(device)
    w = cfg.audio.clip_samples
    hop = w - int(round(cfg.inference.overlap * w))
    windows = frame(torch.from_numpy(wave_model_rate), w, hop)
    model = model.to(device).to(memory_format=torch.contiguous_format)
    cl = model.channels_last
    model.channels_last = False
    _, _, log_mag = fe.analyse(windows.to(device))

    def run():
        with torch.no_grad():
            for i in range(log_mag.shape[0]):
                model.features(log_mag[i:i + 1])
        if device.type == "cuda":
            torch.cuda.synchronize()

    secs = interleaved({"plain": run}, 2)["plain"]["median"]
    model.channels_last = cl
    return secs, windows.shape[0]


def calibrate_batchnorm(model, cfg) -> None:
    """Give untrained BatchNorm layers the running statistics of real input.

    With the published init (conv weights N(0, 1e-3)) and default running statistics,
    activations shrink to denormal floats, which run many times slower on CPUs and
    would make every timing meaningless; a trained model never sees that.
    """
    fe = SpectralFrontEnd.from_config(cfg.audio)
    x = torch.from_numpy(test_signal(cfg.audio.sample_rate, 4 * cfg.audio.clip_samples / cfg.audio.sample_rate, 9))
    windows = frame(x, cfg.audio.clip_samples, cfg.audio.clip_samples)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model.features(fe.analyse(windows)[2])
    model.eval()


def peak_rss_mb(ckpt: str, path: str, out: str, queries: list[str]) -> float:
    code = (
        "import resource,sys\n"
        "from clipsep_ray.separate import Separator\n"
        f"s=Separator.from_checkpoint({ckpt!r})\n"
        f"s.separate_file({path!r}, {out!r}, {queries!r})\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def bench_preset(preset: str, args, tmp: str) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.checkpoint and preset == "checkpoint":
        model, cfg, _ = load_checkpoint(args.checkpoint)
        ckpt = args.checkpoint
    else:
        # Untrained weights: the CLIP text tower is built at random (no download); timings are the same.
        cfg = load_config(preset, ["query.clip_pretrained="])
        torch.manual_seed(0)
        model = build_model(cfg.model).eval()
        torch.nn.init.normal_(model.query_proj.weight, 0, 0.5)  # untrained: make queries differ
        calibrate_batchnorm(model, cfg)
        ckpt = save_checkpoint(os.path.join(tmp, f"{preset}.pt"), model, cfg)
    # One query encoder for every Separator below: an untrained CLIP is random, and each new
    # one would give different query embeddings (and so different stems) to compare.
    from clipsep_ray.models.query import QueryEncoder

    encoder = QueryEncoder.from_config(cfg.query)
    sr_in = 44100
    wave = test_signal(sr_in, args.seconds)
    src = os.path.join(tmp, f"{preset}-in.wav")
    write_audio(src, wave, sr_in)
    from clipsep_ray.audio.io import resample

    x_model = resample(wave, sr_in, cfg.audio.sample_rate)
    plain, n_windows = plain_forward_seconds(load_checkpoint(ckpt)[0], cfg, x_model, device)

    # The whole path (files in, files out) and the core function alone at the model rate (no
    # decode/resample/encode), every variant warmed up, then timed in turns (benchmarks/timing.py).
    sep_core = Separator.from_checkpoint(ckpt, query_encoder=encoder)
    x_t = torch.from_numpy(np.asarray(x_model, dtype=np.float32))
    seps = {p: Separator.from_checkpoint(ckpt, precision=p, query_encoder=encoder) for p in ("auto", "fp32")}

    def path(precision: str, q: int):
        return lambda: seps[precision].separate_file(src, os.path.join(tmp, f"out-{precision}-{q}"), QUERIES[:q])

    def core(q: int):
        _, proj = sep_core.projections(QUERIES[:q])
        return lambda: separate(sep_core.model, sep_core.frontend, x_t, proj, sep_core.cfg.inference, sep_core.device)

    times = interleaved({"path_auto_1": path("auto", 1), "path_auto_8": path("auto", 8),
                         "path_fp32_1": path("fp32", 1), "core_1": core(1), "core_8": core(8)},
                        args.repeats, warmup=args.warmup)
    med = {k: v["median"] for k, v in times.items()}
    core1, core8 = med["core_1"], med["core_8"]
    auto = autocast_dtype("auto", device)
    t_auto1, t_auto8, t_fp32 = med["path_auto_1"], med["path_auto_8"], med["path_fp32_1"]

    # Precision: estimates of the default path vs. the all-fp32 path on 2-source mixtures.
    sep_auto = Separator.from_checkpoint(ckpt, precision="auto", query_encoder=encoder)
    sep_32 = Separator.from_checkpoint(ckpt, precision="fp32", query_encoder=encoder)
    s1 = test_signal(cfg.audio.sample_rate, 8.0, 1)
    s2 = (np.random.default_rng(2).standard_normal(len(s1)) * 0.05).astype(np.float32)
    mix = (s1 + s2) / 2
    refs = torch.from_numpy(np.stack([s1, s2]) / 2).double()
    qs = QUERIES[:2]
    est_a = sep_auto.separate(mix, cfg.audio.sample_rate, qs)
    est_f = sep_32.separate(mix, cfg.audio.sample_rate, qs)
    sdr_a = bss_eval(refs, torch.from_numpy(np.stack([est_a[q] for q in qs])).double())["sdr"]
    sdr_f = bss_eval(refs, torch.from_numpy(np.stack([est_f[q] for q in qs])).double())["sdr"]

    row = {
        "preset": preset, "device": str(device), "autocast": str(auto), "cpu_features": cpu_features(),
        "input_seconds": args.seconds, "repeats": args.repeats, "warmup": args.warmup,
        "timings_s": {k: {m: round(v[m], 4) for m in ("median", "min", "max")} for k, v in times.items()},
        "windows": n_windows,
        "plain_fp32_forward_s": plain, "plain_x_realtime": args.seconds / plain,
        "path_s": t_auto1, "path_x_realtime": args.seconds / t_auto1,
        "path_fp32_s": t_fp32, "path_fp32_x_realtime": args.seconds / t_fp32,
        "speedup_vs_plain": plain / t_auto1,
        "sdr_path": sdr_a.tolist(), "sdr_fp32": sdr_f.tolist(),
        "sdr_max_abs_diff_db": float((sdr_a - sdr_f).abs().max()),
        "path_8_queries_s": t_auto8, "queries_8_over_1": t_auto8 / t_auto1,
        "core_1_query_s": core1, "core_8_queries_s": core8, "core_queries_8_over_1": core8 / core1,
    }
    if args.long_minutes:
        short = os.path.join(tmp, f"{preset}-1min.wav")
        long = os.path.join(tmp, f"{preset}-long.wav")
        write_audio(short, test_signal(16000, 60.0), 16000)
        from clipsep_ray.audio.io import StreamingAudioWriter

        with StreamingAudioWriter(long, 16000) as w:  # written in blocks: the benchmark itself stays small
            for i in range(int(args.long_minutes)):
                w.write(test_signal(16000, 60.0, seed=i))
        row["rss_1min_mb"] = peak_rss_mb(ckpt, short, os.path.join(tmp, "m1"), QUERIES[:1])
        row["rss_long_mb"] = peak_rss_mb(ckpt, long, os.path.join(tmp, "m60"), QUERIES[:1])
        row["long_minutes"] = args.long_minutes
        row["rss_long_over_1min"] = row["rss_long_mb"] / row["rss_1min_mb"]
    return row


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--long-minutes", type=float, default=60.0, help="0 skips the memory measurement")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant (medians reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of every variant before timing")
    p.add_argument("--checkpoint", default=None, help="also benchmark this trained checkpoint ('checkpoint' row)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from clipsep_ray.models.query import register_clip_configs

    register_clip_configs()
    presets = list(args.presets) + (["checkpoint"] if args.checkpoint else [])
    rows = []
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            row = bench_preset(preset, args, tmp)
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "rows": rows}, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
