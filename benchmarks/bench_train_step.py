"""Training-step throughput (mixtures/s) and memory for a preset, data already in memory.

Times the whole on-device step: mixing (pairs, gains), STFT, warp, targets, forward,
loss (NIT when model.noise_heads > 0), backward, grad clipping and the Adam step.
Data loading is excluded here; its share of the step time is measured by the Ray
training run itself (``data_wait_frac`` in its reported metrics).

Usage: python benchmarks/bench_train_step.py --preset paper --precision bf16 [--batch 32] [--steps 20] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.config import load_config
from clipsep_ray.models.registry import build_model
from clipsep_ray.train.loop import make_optimizer, train_step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--channels-last", choices=["true", "false"], default="true")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.preset, args.overrides + [f"model.channels_last={args.channels_last}"]
                      + ([f"train.batch_size={args.batch}"] if args.batch else []))
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(dev).train()
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fe = SpectralFrontEnd.from_config(cfg.audio).to(dev)
    opt, sched = make_optimizer(model, cfg.train)
    b = cfg.train.batch_size
    g = torch.Generator(device=dev).manual_seed(0)
    batch = {"audio": (torch.rand(b, cfg.audio.clip_samples, device=dev, generator=g) - 0.5),
             "image_query": torch.randn(b, cfg.model.embed_dim, device=dev, generator=g),
             "clip_index": torch.arange(b, device=dev)}
    amp = torch.bfloat16 if args.precision == "bf16" else None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(i):
        train_step(model, fe, batch, cfg, i, g, opt, sched, amp)

    for i in range(args.warmup):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    el = time.perf_counter() - t0
    row = {"preset": args.preset, "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor()
           or "cpu", "threads": torch.get_num_threads(), "precision": args.precision,
           "channels_last": cfg.model.channels_last, "batch": b, "noise_heads": cfg.model.noise_heads,
           "s_per_step": el / args.steps, "mixtures_per_s": b * args.steps / el}
    if dev.type == "cuda":
        row["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
