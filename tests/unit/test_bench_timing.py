"""The benchmarks' timing rules (issue 14): every variant warmed up before any timing, the timed
runs interleaved, medians with their spread, and the CPU features named."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))
from timing import cpu_features, interleaved  # noqa: E402


def test_warm_up_comes_first_and_runs_interleave():
    calls = []
    clock_ticks = iter(range(1000))
    variants = {name: (lambda n=name: calls.append(n)) for name in ("fp32", "bf16", "q8")}
    out = interleaved(variants, repeats=3, warmup=1, clock=lambda: next(clock_ticks))
    assert calls[:3] == ["fp32", "bf16", "q8"]  # every variant warmed up before the first timing
    assert calls[3:] == ["fp32", "bf16", "q8", "bf16", "q8", "fp32", "q8", "fp32", "bf16"]
    assert all(len(r["runs"]) == 3 and r["min"] <= r["median"] <= r["max"] for r in out.values())


def test_a_slow_first_call_does_not_reach_the_figures():
    cost = {"a": [5.0, 1.0, 1.0, 1.0], "b": [1.0, 1.0, 1.0, 1.0]}  # "a" pays a warm-up on its first call
    now = [0.0]

    def make(name):
        def run():
            now[0] += cost[name].pop(0)
        return run

    out = interleaved({"a": make("a"), "b": make("b")}, repeats=3, clock=lambda: now[0])
    assert out["a"]["median"] == out["b"]["median"] == 1.0
    with pytest.raises(ValueError, match="repeats"):
        interleaved({"a": make("b")}, repeats=0)


def test_cpu_features_read_from_cpuinfo():
    info = "processor: 0\nflags\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16 sse\n"
    assert cpu_features(info) == ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    assert cpu_features("flags: fpu sse") == []
