"""The Ray Train layer: ``train_loop_per_worker`` as a short sequence of named steps.

set-up (model on the device and DDP-wrapped, optimiser, resume) -> batches (passes over the
worker's dataset shard) -> step (``loop.train_step``) -> hooks -> log -> report (validation
split over every rank and gathered on rank 0, checkpoint on rank 0, ``ray.train.report`` on
every rank). The plain-PyTorch parts live in :mod:`clipsep_ray.train.loop`.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.config import Config
from clipsep_ray.models.base import SeparationModel
from clipsep_ray.models.checkpoint import FILENAME, STATE_FILE
from clipsep_ray.train.loop import (ValSet, WeightAverage, make_optimizer, restore_state, train_state, train_step,
                                    unwrap, validate)

#: A hook runs after every optimisation step: hook(step, rank, world_size); it may raise.
StepHook = Callable[[int, int, int], None]


@dataclass
class FailOnce:
    """Fault injection for tests: the last worker raises once at ``step``; ``marker`` records that it did."""

    step: int
    marker: str

    def __call__(self, step: int, rank: int, world: int) -> None:
        if step == self.step and rank == world - 1 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise RuntimeError(f"injected worker failure at step {step}")


@dataclass
class Worker:
    """One training worker's state."""

    cfg: Config
    rank: int
    world: int
    device: torch.device
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    frontend: SpectralFrontEnd
    autocast_to: torch.dtype | None
    ema: WeightAverage | None = None  # rank 0 only, when train.ema_decay > 0
    step: int = 0
    start_step: int = 0

    @property
    def judged(self) -> SeparationModel:
        """The weights that are validated and saved as ``model.pt``: the average when there is one
        (never the DDP wrapper: its state_dict keys carry a ``module.`` prefix)."""
        return self.ema.model if self.ema is not None else unwrap(self.model)

    @property
    def per_worker_batch(self) -> int:
        return self.cfg.train.batch_size // self.world  # train.batch_size is the global batch, as in the paper


@dataclass
class Meter:
    """Throughput and loss since the last report."""

    t0: float = field(default_factory=time.perf_counter)
    wait: float = 0.0
    n: int = 0
    loss: float = 0.0

    def reset(self) -> None:
        self.t0, self.wait, self.n, self.loss = time.perf_counter(), 0.0, 0, 0.0

    def add(self, loss: float) -> None:
        self.n += 1
        self.loss += loss

    def rates(self, batch_size: int) -> dict[str, float]:
        el = max(1e-9, time.perf_counter() - self.t0)
        return {"loss": self.loss / max(1, self.n), "clips_per_s": self.n * batch_size / el,
                "data_wait_frac": self.wait / el}


def save_training_checkpoint(w: Worker, directory: str) -> None:
    """``model.pt`` (an ordinary self-describing checkpoint: ``Separator.from_checkpoint(<dir>)``
    reads it; the weight average when there is one) and the optimiser/schedule/random state
    beside it (with the raw training weights when model.pt holds the average)."""
    from clipsep_ray.models.checkpoint import save_checkpoint

    extra = {"step": w.step}
    state = train_state(w.opt, w.sched, w.step, w.generator)
    if w.ema is not None:
        extra.update(ema_decay=w.ema.decay, ema_updates=w.ema.updates)
        state.update(train_weights=unwrap(w.model).state_dict(), ema_updates=w.ema.updates)
    save_checkpoint(os.path.join(directory, FILENAME), w.judged, w.cfg, extra=extra)
    torch.save(state, os.path.join(directory, STATE_FILE))


def load_training_checkpoint(w: Worker, directory: str) -> int:
    from clipsep_ray.models.checkpoint import read_checkpoint

    payload = read_checkpoint(os.path.join(directory, FILENAME), map_location=str(w.device))
    state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
    # model.pt holds the average when the run kept one; the raw weights are then in the state.
    unwrap(w.model).load_state_dict(state.get("train_weights", payload["model"]))
    if w.ema is not None:
        w.ema.model.load_state_dict(payload["model"])  # a run that had no average starts one from its weights
        w.ema.updates = int(state.get("ema_updates", 0))
    return restore_state(state, w.opt, w.sched, w.generator)


def setup(cfg: Config) -> Worker:
    """Seeds, the model on the device (DDP-wrapped) BEFORE the optimiser exists, so that restored
    Adam state lands on the parameters' device, then resume from Ray Train's checkpoint."""
    import ray.train
    import ray.train.torch

    from clipsep_ray.models.registry import build_model
    from clipsep_ray.runtime import autocast_dtype

    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if tc.batch_size % world or tc.batch_size // world < cfg.mixing.num_sources:
        raise ValueError(f"train.batch_size={tc.batch_size} (global) must split evenly over {world} workers, "
                         f"with at least mixing.num_sources={cfg.mixing.num_sources} rows each")
    # Threads come from the workers' runtime env (runtime.worker_thread_env), never set_num_threads.
    torch.manual_seed(tc.seed + rank)
    device = ray.train.torch.get_device()
    model = build_model(cfg.model)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    opt, sched = make_optimizer(model, tc)
    # bf16 autocast on a GPU and on CPUs that multiply bf16 natively (1.5x faster steps on the
    # 2-core box, validation SDRi within 0.3 dB: benchmarks/RESULTS.md); parameters and grads stay fp32.
    w = Worker(cfg, rank, world, device, model, opt, sched,
               torch.Generator(device=device).manual_seed(tc.seed * 1000 + rank),
               SpectralFrontEnd.from_config(cfg.audio).to(device), autocast_dtype(tc.precision, device),
               ema=WeightAverage(model, tc.ema_decay) if tc.ema_decay > 0 and rank == 0 else None)
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            w.step = load_training_checkpoint(w, d)
        # Only rank 0's random state is saved: other ranks draw fresh, distinct mixing streams.
        if rank:
            w.generator.manual_seed(tc.seed * 1000 + rank + 7919 * w.step)
        if rank == 0:
            print(f"[train] resumed from step {w.step}", flush=True)
    w.start_step = w.step
    return w


def batches(shard, w: Worker, meter: Meter) -> Iterator[dict]:
    """Batches of the worker's shard, pass after pass, until ``train.max_steps``; time spent
    waiting for data goes to ``meter``."""
    tc = w.cfg.train
    while w.step < tc.max_steps:
        # A seeded shuffle buffer: with a planned pass (data.planned_pass) the run then repeats.
        it = iter(shard.iter_torch_batches(batch_size=w.per_worker_batch, drop_last=True, device=w.device,
                                           local_shuffle_buffer_size=tc.shuffle_buffer or None,
                                           local_shuffle_seed=tc.seed * 1000 + w.rank + 7919 * w.step,
                                           prefetch_batches=16))
        pass_start = w.step
        while w.step < tc.max_steps:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                if w.step == pass_start:
                    raise RuntimeError(f"the training data gave no batch of {w.per_worker_batch} rows on worker "
                                       f"{w.rank}: too few clips for train.batch_size x workers") from None
                break
            meter.wait += time.perf_counter() - t
            yield batch


def log(w: Worker, meter: Meter) -> None:
    r = meter.rates(w.cfg.train.batch_size)
    print(f"[train] step {w.step}/{w.cfg.train.max_steps} loss {r['loss']:.4f} lr {w.sched.get_last_lr()[0]:.2e} "
          f"{r['clips_per_s']:.1f} mixtures/s data-wait {100 * r['data_wait_frac']:.0f}%", flush=True)


def report(w: Worker, meter: Meter, metrics: dict, grad_norm, val: ValSet | None, keep: bool = True) -> None:
    """Validation (every rank scores a share, rank 0 gets the scores), a checkpoint (rank 0, when
    ``keep``: every checkpoint is validated, as the best is chosen by its score; ``train.val_every``
    adds scores between them) and ``ray.train.report`` (every rank, the same number of times)."""
    import ray.train

    result = {"step": w.step, "start_step": w.start_step, **meter.rates(w.cfg.train.batch_size),
              "lr": w.sched.get_last_lr()[0], "grad_norm": float(grad_norm),
              **{k: v for k, v in metrics.items() if k != "loss"}}
    if val is not None:  # every rank scores its share of the pairs; rank 0 gets the scores
        result.update(validate(judge(w), val, w.cfg, w.device, rank=w.rank, world=w.world))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if w.rank == 0:
            if keep:
                save_training_checkpoint(w, tmp)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            print(f"[train] step {w.step}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float)), flush=True)
        ray.train.report(result, checkpoint=checkpoint, checkpoint_dir_name=f"step_{w.step:08d}" if keep else None)


def judge(w: Worker) -> nn.Module:
    """The weights validation scores, on every rank: rank 0's judged model (the average, when
    there is one), broadcast into a copy on the other ranks. Their own weights can differ from
    it (batch-norm statistics of their own batches; no average)."""
    if w.world == 1:
        return w.judged
    import torch.distributed as dist

    model = w.judged if w.rank == 0 else copy.deepcopy(unwrap(w.model)).eval()
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)
    return model


def quiet_report_log() -> None:
    """Ray Train logs every ``report`` of every worker at INFO ("Reporting training result N:
    TrainingReport(...)", a few hundred characters: 12 such lines in a demo run); our own line
    per validation says the same. Warnings and errors of that logger still show."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: leave its logging alone
        return
    getattr(context, "logger", logging.getLogger(context.__file__)).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: stream the "train" shard, mix on the device, step, report checkpoints.

    loop_config: ``config`` (resolved Config dict), optional ``val`` (a :class:`ValSet`),
    optional ``hooks`` (:data:`StepHook` callables, e.g. :class:`FailOnce`).
    """
    import ray.train

    quiet_report_log()
    w = setup(Config.from_dict(loop_config["config"]))
    tc = w.cfg.train
    val, hooks = loop_config.get("val"), loop_config.get("hooks") or ()
    meter = Meter()
    for batch in batches(ray.train.get_dataset_shard("train"), w, meter):
        metrics, grad_norm = train_step(w.model, w.frontend, batch, w.cfg, w.step, w.generator, w.opt, w.sched,
                                        w.autocast_to)
        w.step += 1
        if w.ema is not None:
            w.ema.update(w.model)
        meter.add(metrics["loss"])
        for hook in hooks:
            hook(w.step, w.rank, w.world)
        if w.step % tc.log_every == 0 and w.rank == 0:
            log(w, meter)
        keep = w.step % tc.checkpoint_every == 0 or w.step == tc.max_steps
        if keep or tc.val_every and w.step % tc.val_every == 0:
            report(w, meter, metrics, grad_norm, val, keep)
            meter.reset()  # in place: the batch generator adds its waits to this meter
