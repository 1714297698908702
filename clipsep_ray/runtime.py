"""The runtime layer: starting or joining Ray, device and precision choice, worker threads.

Every entry point (training, evaluation, ingest, embed, the demo, and whatever comes next)
calls :func:`init_ray`; nothing else in the package calls ``ray.init``. Torch and Ray are
imported inside the functions, so this module is as light as the command line.

Joining rule: an explicit ``address``, else ``RAY_ADDRESS`` from the environment (which
``ray job submit`` sets for a job's driver), joins that cluster, and then neither
``num_cpus`` nor ``num_gpus`` may be given (Ray refuses them for an existing cluster);
otherwise a local cluster is started with this machine's CPUs.
"""
from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from typing import Any

#: Precision names every config field and option accepts.
PRECISIONS = ("auto", "fp32", "bf16")


# -- Ray ------------------------------------------------------------------------------------
def ray_address(address: str | None = None) -> str | None:
    """The cluster to join: ``address``, else ``RAY_ADDRESS``, else None (start a local one)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def init_ray(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = True,
             **kwargs: Any) -> bool:
    """Join the cluster at ``address`` / ``RAY_ADDRESS``, or start a local one; a no-op when
    Ray is already initialised. Returns True when this call started or joined Ray.

    ``num_cpus`` (default: this machine's) applies to a local start only. A local start always
    has its dashboard: it serves the state API, which Ray Train's placement-group cleaner polls
    every second; without it the demo printed 109 "Failed to query Ray Train Controller actor
    state" warnings (issue 14), and a crashed controller's placement group would not be freed.
    """
    import ray

    if ray.is_initialized():
        return False
    quiet_progress_when_logged()
    target = ray_address(address)
    if target:
        ray.init(address=target, log_to_driver=log_to_driver, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, log_to_driver=log_to_driver, **kwargs)
    return True


def quiet_progress_when_logged(stream=None) -> bool:
    """No Ray Data progress bars when the output is not a terminal (a log file, a pipe, CI).

    Ray Data's bars, drawn in its coordinator actors, reach a redirected driver log as cursor
    movements: a 400-step sweep trial left 507 lines of "\\x1b[A" there, and the driver itself
    logs a progress table every few seconds. The datasets made after this call inherit the
    setting (each copies the driver's DataContext). Returns True when it turned them off.
    """
    import sys

    from ray.data import DataContext

    stream = stream or sys.stdout
    if stream.isatty():
        return False
    DataContext.get_current().enable_progress_bars = False
    return True


def cluster_cpus(default: float = 1.0) -> float:
    """Logical CPUs of the running cluster."""
    import ray

    return float(ray.cluster_resources().get("CPU", default))


def cluster_memory_mb() -> float:
    """MB of the running cluster's memory for tasks and actors (Ray's ``memory`` resource)."""
    import ray

    return float(ray.cluster_resources().get("memory", float("inf"))) / 2**20


def cluster_gpus() -> float:
    """GPUs of the running cluster."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def worker_thread_env(threads: int) -> dict[str, str]:
    """Environment variables that size a worker's math libraries to ``threads``.

    Workers get their thread count from the environment, never from
    ``torch.set_num_threads``: with torch 2.14.1's MKL on the 2-core build box any
    ``set_num_threads(n >= 2)`` call breaks ``torch.linalg.solve`` afterwards (DLASWP
    errors), and BSSEval with it (docs/DECISIONS.md, "Threads").
    """
    n = str(max(1, int(threads)))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


# -- devices and precision ------------------------------------------------------------------
@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (avx512_bf16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto"):
    """``auto`` -> cuda when a GPU is visible, else cpu; anything else as given."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(precision: str, device):
    """bf16 for 'bf16', and for 'auto' where the hardware has it; None means fp32.

    'auto' picks bf16 on a CUDA device that supports it and on CPUs with avx512_bf16/AMX
    (a ``tiny`` training step 1.55x faster on the 2-core box, benchmarks/RESULTS.md).
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_bf16() else None


def autocast(device, dtype) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``'s type; a no-op context for None (fp32)."""
    import torch

    device = torch.device(device)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
