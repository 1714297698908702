"""The training loop: one ``train_loop_per_worker`` for every variant.

Plain-PyTorch pieces (schedule, loss of one batch, validation) import without Ray and
are unit-tested on their own; :func:`train_loop_per_worker` is the thin Ray Train layer
(DDP via ``prepare_model``, dataset shards, ``ray.train.report`` with checkpoints).

Variants: ``model.arch`` clipsep (``train.mode`` image | text | hybrid; ``model.noise_heads``
0 = CLIPSep, > 0 = NIT), labelsep, pit.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.config import Config, TrainConfig
from clipsep_ray.losses import clipsep_loss, nit_loss, noise_regularizer, pit_loss

STATE_FILE = "train_state.pt"


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step``: linear warm-up from 0, linear decay to final_lr, then constant."""
    if step < cfg.warmup_steps:
        return step / max(1, cfg.warmup_steps)
    if step < cfg.decay_steps:
        span = max(1, cfg.decay_steps - cfg.warmup_steps)
        frac = (step - cfg.warmup_steps) / span
        return 1.0 + frac * (cfg.final_lr / cfg.lr - 1.0)
    return cfg.final_lr / cfg.lr


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    """Adam (no weight decay by default) + the warm-up/decay schedule, stepped once per training step."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    return opt, sched


def query_key(mode: str, step: int) -> str:
    """Which query column trains this step: image queries, text queries, or alternating (hybrid)."""
    if mode == "image":
        return "query"
    if mode == "text":
        return "text_query"
    return "query" if step % 2 == 0 else "text_query"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def batch_loss(model: nn.Module, frontend: SpectralFrontEnd, batch: dict[str, Tensor], cfg: Config, step: int,
               generator: torch.Generator, autocast: torch.dtype | None = None) -> tuple[Tensor, dict[str, float]]:
    """Mix a batch of single-source rows on the device and return (loss, metrics).

    batch: ``audio`` (B, T), ``query`` (B, D) image queries, optional ``text_query`` (B, D),
    optional ``label_id`` (B,). Each source of each mixture is queried with its own row's query.
    """
    from clipsep_ray.data.mixing import mix_batch, prepare_targets

    core = _unwrap(model)
    arch = cfg.model.arch
    key = query_key(cfg.train.mode, step)
    if arch == "clipsep" and key not in batch:
        raise KeyError(f"train.mode={cfg.train.mode} needs a '{key}' column (text embeddings of labels: run embed "
                       f"on labelled shards)")
    if arch == "labelsep" and "label_id" not in batch:
        raise KeyError("model.arch=labelsep needs a 'label_id' column (labelled shards with text embeddings)")
    audio = batch["audio"]
    queries = batch[key] if arch == "clipsep" else audio.new_zeros(audio.shape[0], 1)
    mixed = mix_batch(audio, queries, cfg.mixing, generator, batch.get("clip_index"))
    prep = prepare_targets(frontend, mixed["sources"], mixed["mixture"], cfg.mixing.binary_masks)
    with torch.autocast(prep["log_mag"].device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        if arch == "pit":
            out = model(prep["log_mag"])
        elif arch == "labelsep":
            out = model(prep["log_mag"], core.embed_labels(batch["label_id"][mixed["index"]]))
        else:
            out = model(prep["log_mag"], mixed["queries"])
    logits = out["query_logits"].float()
    metrics: dict[str, float] = {}
    if arch == "pit":
        loss, _ = pit_loss(logits, prep["targets"], prep["weights"])
    elif cfg.model.noise_heads > 0:
        noise = out["noise_logits"].float()
        sep, choice = nit_loss(logits, noise, prep["targets"], prep["weights"])
        reg = noise_regularizer(noise, cfg.train.noise_reg_lambda, cfg.train.noise_reg_gamma)
        loss = sep + reg
        metrics.update(noise_reg=float(reg.detach()), arrangement_0=float((choice == 0).float().mean()))
    else:
        loss = clipsep_loss(logits, prep["targets"], prep["weights"])
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def train_step(model: nn.Module, frontend: SpectralFrontEnd, batch: dict[str, Tensor], cfg: Config, step: int,
               generator: torch.Generator, opt, sched, autocast: torch.dtype | None = None
               ) -> tuple[dict[str, float], Tensor]:
    """One optimisation step on one batch: loss, backward, grad-norm clipping, Adam, schedule.
    Returns (metrics, gradient norm before clipping)."""
    model.train()
    loss, metrics = batch_loss(model, frontend, batch, cfg, step, generator, autocast)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    opt.step()
    sched.step()
    return metrics, grad_norm


@dataclass
class ValSet:
    """Deterministic validation mixtures: (M, T) clips at the model rate, their queries, and pairs.

    ``pairs`` (M,) gives each target clip's interference clip; ``text_query`` ("a photo of
    [label]") and ``label_id`` exist when the data has labels.
    """

    audio: Tensor
    query: Tensor
    text_query: Tensor | None
    pairs: Tensor
    label_id: Tensor | None = None


@torch.no_grad()
def validate(model: nn.Module, val: ValSet, cfg: Config, device: torch.device) -> dict[str, float]:
    """Mean SDR / SDRi of the validation mixtures for each query kind the model takes, by the
    evaluation protocol (``evaluate.evaluate_rows``, through the one inference function)."""
    from clipsep_ray.evaluate import evaluate_rows

    core = _unwrap(model)
    was_training = core.training
    core.eval()
    rows = {"audio": val.audio, "query": val.query, "text_query": val.text_query}
    if val.label_id is not None:
        rows["label_id"] = val.label_id
    summary, _ = evaluate_rows(core, cfg, rows, val.pairs.tolist(), device, bounds=False)
    core.train(was_training)
    out: dict[str, float] = {}
    for r in summary:
        kind = r["query"]
        out[f"val_sdr_{kind}"] = r["sdr_mean"] if r["sdr_mean"] is not None else float("nan")
        out[f"val_sdri_{kind}"] = r["sdri_mean"] if r["sdri_mean"] is not None else float("nan")
        out[f"val_skipped_{kind}"] = r["skipped"]
    # The score that picks the best checkpoint: text queries when there are labels (the product's use).
    for kind in ("text", "label", "image", "none"):
        if f"val_sdr_{kind}" in out:
            out["val_sdr"] = out[f"val_sdr_{kind}"]
            break
    return out


def train_state(opt, sched, step: int, generator: torch.Generator) -> dict:
    """Everything besides the weights that a resumed run needs (plain containers + tensors)."""
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
             "rng_torch": torch.get_rng_state(), "rng_mixing": generator.get_state(), "scaler": None}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_state(state: dict, opt, sched, generator: torch.Generator) -> int:
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_torch"])
    generator.set_state(state["rng_mixing"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return int(state["step"])


def _save_ray_checkpoint(model: nn.Module, cfg: Config, state: dict, directory: str) -> None:
    from clipsep_ray.models.checkpoint import save_checkpoint

    # model.pt is an ordinary self-describing checkpoint: Separator.from_checkpoint(<dir>) reads it.
    save_checkpoint(os.path.join(directory, "model.pt"), _unwrap(model), cfg, extra={"step": state["step"]})
    torch.save(state, os.path.join(directory, STATE_FILE))


def _load_ray_checkpoint(directory: str, model: nn.Module, opt, sched, generator) -> int:
    from clipsep_ray.models.checkpoint import read_checkpoint

    payload = read_checkpoint(os.path.join(directory, "model.pt"), map_location=str(next(model.parameters()).device))
    model.load_state_dict(payload["model"])
    state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
    return restore_state(state, opt, sched, generator)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: stream the "train" shard, mix on the device, step, report checkpoints.

    loop_config: ``config`` (resolved Config dict), optional ``val`` (a :class:`ValSet`),
    optional ``fail_at_step`` + ``fail_marker`` (fault injection for tests: raise once).
    """
    import ray.train
    import ray.train.torch

    from clipsep_ray.models.registry import build_model
    from clipsep_ray.separate import autocast_dtype

    cfg = Config.from_dict(loop_config["config"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Threads come from OMP_NUM_THREADS in the workers' runtime env (trainer.py): calling
    # torch.set_num_threads(n >= 2) breaks torch.linalg.solve (and BSSEval) with torch 2.14.1's MKL.
    torch.manual_seed(tc.seed + rank)
    device = ray.train.torch.get_device()
    generator = torch.Generator(device=device).manual_seed(tc.seed * 1000 + rank)
    model = build_model(cfg.model)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # On the device (and DDP-wrapped) BEFORE the optimiser exists, so that restored Adam
    # state lands on the parameters' device.
    model = ray.train.torch.prepare_model(model)
    opt, sched = make_optimizer(model, tc)
    step = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            step = _load_ray_checkpoint(d, _unwrap(model), opt, sched, generator)
        # Only rank 0's random state is saved: other ranks draw fresh, distinct mixing streams.
        if rank:
            generator.manual_seed(tc.seed * 1000 + rank + 7919 * step)
        if rank == 0:
            print(f"[train] resumed from step {step}", flush=True)
    frontend = SpectralFrontEnd.from_config(cfg.audio).to(device)
    # bf16 autocast on a GPU and on CPUs that multiply bf16 natively (1.5x faster steps on the
    # 2-core box, validation SDRi within 0.3 dB: benchmarks/RESULTS.md); parameters and grads stay fp32.
    amp = autocast_dtype(tc.precision, device)
    val: ValSet | None = loop_config.get("val")
    shard = ray.train.get_dataset_shard("train")
    fail_at = loop_config.get("fail_at_step")
    marker = loop_config.get("fail_marker")

    if tc.batch_size % world or tc.batch_size // world < cfg.mixing.num_sources:
        raise ValueError(f"train.batch_size={tc.batch_size} (global) must split evenly over {world} workers, "
                         f"with at least mixing.num_sources={cfg.mixing.num_sources} rows each")
    per_worker = tc.batch_size // world  # train.batch_size is the global batch, as in the paper
    start_step = step
    window = {"t0": time.perf_counter(), "wait": 0.0, "n": 0, "loss": 0.0}
    while step < tc.max_steps:
        batches = shard.iter_torch_batches(batch_size=per_worker, local_shuffle_buffer_size=tc.shuffle_buffer or None,
                                           drop_last=True, device=device, prefetch_batches=16)
        it = iter(batches)
        epoch_start = step
        while step < tc.max_steps:
            t_wait = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                if step == epoch_start:
                    raise RuntimeError(f"the training data gave no batch of {per_worker} rows on worker {rank}: "
                                       f"too few clips for train.batch_size x workers") from None
                break
            window["wait"] += time.perf_counter() - t_wait
            metrics, grad_norm = train_step(model, frontend, batch, cfg, step, generator, opt, sched, amp)
            step += 1
            window["n"] += 1
            window["loss"] += metrics["loss"]
            if fail_at is not None and step == fail_at and rank == world - 1 and marker and not os.path.exists(marker):
                open(marker, "w").close()
                raise RuntimeError(f"injected worker failure at step {step}")
            if step % tc.log_every == 0 and rank == 0:
                el = time.perf_counter() - window["t0"]
                print(f"[train] step {step}/{tc.max_steps} loss {window['loss'] / max(1, window['n']):.4f} "
                      f"lr {sched.get_last_lr()[0]:.2e} {window['n'] * tc.batch_size / el:.1f} mixtures/s "
                      f"data-wait {100 * window['wait'] / el:.0f}%", flush=True)
            if step % tc.checkpoint_every == 0 or step == tc.max_steps:
                el = time.perf_counter() - window["t0"]
                report = {"step": step, "start_step": start_step, "loss": window["loss"] / max(1, window["n"]), "lr": sched.get_last_lr()[0],
                          "grad_norm": float(grad_norm), "clips_per_s": window["n"] * tc.batch_size / el,
                          "data_wait_frac": window["wait"] / el, **{k: v for k, v in metrics.items() if k != "loss"}}
                if val is not None and rank == 0:
                    report.update(validate(model, val, cfg, device))
                state = train_state(opt, sched, step, generator)
                with tempfile.TemporaryDirectory() as tmp:
                    checkpoint = None
                    if rank == 0:
                        _save_ray_checkpoint(model, cfg, state, tmp)
                        checkpoint = ray.train.Checkpoint.from_directory(tmp)
                        print(f"[train] step {step}: " + ", ".join(
                            f"{k} {v:.4g}" for k, v in report.items() if isinstance(v, float)), flush=True)
                    ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=f"step_{step:08d}")
                window = {"t0": time.perf_counter(), "wait": 0.0, "n": 0, "loss": 0.0}
