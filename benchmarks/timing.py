"""Timing helpers the benchmarks share: compared variants warmed up, then interleaved, with
medians and spread; the machine and the CPU features behind the figures.

Why interleaved: on the 2-core build box (AMX), timing each variant in its own block put the
first block's warm-up (oneDNN kernel selection, allocator growth) on whichever came first:
``--repeats 2`` showed bf16 slower than fp32 (1.37 s vs 1.13 s) where ``--repeats 5`` showed it
4x faster (issue 14). Every variant now runs ``warmup`` times before any timing, and then the
timed rounds take the variants in turn, so drift of the machine hits them all alike.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Mapping

FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """The math-relevant CPU flags of this machine (``/proc/cpuinfo``), in FEATURES order."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return [f for f in FEATURES if f in flags]


def machine() -> str:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu} ({' '.join(cpu_features()) or 'no listed features'}), {os.cpu_count()} cores visible, "
            f"torch threads {torch.get_num_threads()}, {gpu}")


def interleaved(variants: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, dict]:
    """Time each variant ``repeats`` times, round-robin (the starting variant rotates each round),
    after ``warmup`` untimed calls of every variant. Returns name -> {median, min, max, runs}."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    runs: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = clock()
            variants[name]()
            runs[name].append(clock() - t0)
    return {n: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v} for n, v in runs.items()}
