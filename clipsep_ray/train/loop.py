"""The training loop's plain-PyTorch pieces: schedule, loss of one batch, one step,
validation, resumable state. They import without Ray and are unit-tested on their own;
``train.worker.train_loop_per_worker`` is the thin Ray Train layer that runs them.

Every variant (``model.arch`` clipsep with ``train.mode`` image | text | hybrid and any
``model.noise_heads``; labelsep; pit) trains through the model contract
(``models/base.py``): the loop never asks which model it trains.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.config import Config, TrainConfig
from clipsep_ray.models.base import SeparationModel
from clipsep_ray.runtime import autocast

#: Validation's query kinds, in the order that picks the score choosing the best checkpoint.
BEST_CHECKPOINT_KINDS = ("text", "label", "image", "none")

#: What every report holds (``train.worker.report``), besides the model's own loss terms.
TRAIN_METRICS = ("step", "start_step", "loss", "clips_per_s", "data_wait_frac", "lr", "grad_norm")
#: Validation diagnostics of a model with noise heads (:func:`nit_diagnostics`).
NIT_METRICS = ("val_nit_noise_share", "val_nit_noise_mean", "val_nit_bce_query", "val_nit_bce_query_noise")


def reported_metrics(cfg: Config) -> set[str]:
    """Names of the metrics the loop reports for ``cfg`` (a sweep's objective must be one).
    Text-query scores need labelled data; that is known only once the data is read."""
    from clipsep_ray.models.registry import model_class

    names = set(TRAIN_METRICS)
    if cfg.data.val_clips > 0:
        kinds = model_class(cfg.model).query_columns
        names |= {"val_sdr"} | {f"val_{m}_{k}" for k in kinds for m in ("sdr", "sdri", "skipped")}
        if cfg.model.noise_heads > 0:
            names |= set(NIT_METRICS)
    return names


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


def unwrap(model: nn.Module) -> SeparationModel:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def batch_loss(model: nn.Module, frontend: SpectralFrontEnd, batch: dict[str, Tensor], cfg: Config, step: int,
               generator: torch.Generator, autocast_to: torch.dtype | None = None) -> tuple[Tensor, dict[str, float]]:
    """Mix a batch of single-source rows on the device and return (loss, metrics).

    batch: ``audio`` (B, T), ``image_query`` (B, D), optional ``text_query`` (B, D), optional
    ``label_id`` (B,). Each source of each mixture is queried with its own row's query, from
    the column the model trains on at this step (``training_column``).
    """
    from clipsep_ray.data.mixing import mix_batch, prepare_targets

    core = unwrap(model)
    column = core.training_column(cfg.train.mode, step)
    if column is not None and column not in batch:
        raise KeyError(f"model.arch={cfg.model.arch} with train.mode={cfg.train.mode} needs a '{column}' column "
                       f"(text embeddings of labels: run embed on labelled shards)")
    audio = batch["audio"]
    values = batch[column] if column is not None else audio.new_zeros(audio.shape[0], 1)
    mixed = mix_batch(audio, values, cfg.mixing, generator, batch.get("clip_index"))
    prep = prepare_targets(frontend, mixed["sources"], mixed["mixture"], cfg.mixing.binary_masks)
    embeddings = core.query_embeddings(mixed["queries"]) if column is not None else None
    with autocast(prep["log_mag"].device, autocast_to):
        out = model(prep["log_mag"], embeddings)
    if step < cfg.train.nit_warmup_steps and out["noise_logits"].numel():
        # NIT warm-up (the authors' code has one): no noise heads, so the NIT loss is plain
        # CLIPSep weighted BCE and the regulariser is 0 until the query heads work.
        out = {**out, "noise_logits": out["noise_logits"][:, :0]}
    loss, metrics = core.training_loss(out, prep["targets"], prep["weights"], cfg.train)
    metrics["loss"] = float(loss.detach())
    return loss, metrics


class DivergedError(RuntimeError):
    """A training step whose loss or gradients are not finite."""


def train_step(model: nn.Module, frontend: SpectralFrontEnd, batch: dict[str, Tensor], cfg: Config, step: int,
               generator: torch.Generator, opt, sched, autocast_to: torch.dtype | None = None
               ) -> tuple[dict[str, float], Tensor]:
    """One optimisation step on one batch: loss, backward, grad-norm clipping, Adam, schedule.
    Returns (metrics, gradient norm before clipping)."""
    model.train()
    loss, metrics = batch_loss(model, frontend, batch, cfg, step, generator, autocast_to)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    # The norm is of the gradients all ranks share (DDP averaged them), so every rank stops here
    # together. Applied, a non-finite step made every weight NaN, and the run went on to its end.
    if not torch.isfinite(grad_norm):
        raise DivergedError(f"training diverged at step {step + 1}: loss {metrics['loss']}, gradient norm "
                            f"{float(grad_norm)}; the step was not applied. Resume from the last checkpoint with "
                            "a lower train.lr, or check the data")
    opt.step()
    sched.step()
    return metrics, grad_norm


class WeightAverage:
    """An exponential moving average of a model's weights (floating parameters and buffers;
    integer buffers are copied). The effective decay ramps up as min(decay, (1 + n) / (10 + n))
    after n updates, so the first steps' random weights fade out of a short run's average."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model: SeparationModel = copy.deepcopy(unwrap(model)).eval()
        self.model.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        source = unwrap(model).state_dict()
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.lerp_(source[name].detach(), 1.0 - d)
            else:
                value.copy_(source[name])


@dataclass
class ValSet:
    """Deterministic validation mixtures: (M, T) clips at the model rate, their queries, and pairs.
    ``image_query`` (M, D) pooled frame embeddings;

    ``pairs`` (M,) gives each target clip's interference clip; ``text_query`` ("a photo of
    [label]") and ``label_id`` exist when the data has labels.
    """

    audio: Tensor
    image_query: Tensor
    text_query: Tensor | None
    pairs: Tensor
    label_id: Tensor | None = None


@torch.no_grad()
def validate(model: nn.Module, val: ValSet, cfg: Config, device: torch.device, *, rank: int = 0,
             world: int = 1) -> dict[str, float]:
    """Mean SDR / SDRi of the validation mixtures for each query kind the model takes, by the
    evaluation protocol (``evaluation.protocol.score_mixtures``, through the one inference function).

    ``world`` > 1 (a ``torch.distributed`` group of that size): every rank scores the mixtures
    i = rank, rank + world, ... with the same weights, and rank 0 gathers the records and
    returns the scores; the other ranks return {}. The scores equal one process's: each
    mixture's record does not depend on where it was scored. BSSEval dominates validation
    (12 of 20 s for the demo's 60 pairs on one core), and the other workers only waited for it.
    """
    import numpy as np

    from clipsep_ray.evaluation.protocol import score_mixtures, summarize_records, take_rows

    core = unwrap(model)
    was_training = core.training
    core.eval()
    rows = {"audio": val.audio, "image_query": val.image_query, "text_query": val.text_query}
    if val.label_id is not None:
        rows["label_id"] = val.label_id
    share = np.arange(rank, len(val.audio), world)
    records = score_mixtures(core, cfg, {**take_rows(rows, share), "clip_id": share.tolist()},
                             take_rows(rows, val.pairs[torch.as_tensor(share)].tolist()), device,
                             bounds=False) if len(share) else []
    core.train(was_training)
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world if rank == 0 else None
        dist.gather_object(records, parts, dst=0)
        if rank != 0:
            return {}
        records = [r for part in parts for r in part]
    summary, _ = summarize_records(records)
    out: dict[str, float] = {}
    for r in summary:
        kind = r["query_kind"]
        out[f"val_sdr_{kind}"] = r["sdr_mean"] if r["sdr_mean"] is not None else float("nan")
        out[f"val_sdri_{kind}"] = r["sdri_mean"] if r["sdri_mean"] is not None else float("nan")
        out[f"val_skipped_{kind}"] = r["skipped"]
    # The score that picks the best checkpoint: text queries when there are labels (the product's use).
    for kind in BEST_CHECKPOINT_KINDS:
        if f"val_sdr_{kind}" in out:
            out["val_sdr"] = out[f"val_sdr_{kind}"]
            break
    out.update(nit_diagnostics(core, val, cfg, device))
    return out


@torch.no_grad()
def nit_diagnostics(model: nn.Module, val: ValSet, cfg: Config, device: torch.device) -> dict[str, float]:
    """What the noise heads do on the (clean) validation mixtures; {} for a model without them.

    Each mixture is a validation clip plus its pair (halved, first ``audio.clip_samples``),
    both sources queried by the kind that picks the best checkpoint (text before image).
    ``val_nit_noise_share``: the share of the targets' loss-weighted energy (sum of w |S|^2)
    in bins the noise heads claim, sum_h sigmoid(n_h) capped at 1; ``val_nit_noise_mean``: the
    mean of sum_h sigmoid(n_h) (what the regulariser compares with its threshold);
    ``val_nit_bce_query`` / ``val_nit_bce_query_noise``: the weighted BCE of the query mask
    alone and of min(1, query + noise head) with the best head per source (diagnostic only:
    separation never uses the noise heads).
    """
    from clipsep_ray.data.mixing import prepare_targets
    from clipsep_ray.losses import weighted_bce

    core = unwrap(model)
    values = {"image_query": val.image_query, "text_query": val.text_query, "label_id": val.label_id}
    column = next((core.query_columns[k] for k in BEST_CHECKPOINT_KINDS
                   if core.query_columns.get(k) and values.get(core.query_columns[k]) is not None), None)
    if column is None:
        return {}
    was_training = core.training
    core.eval()
    pairs = val.pairs.long()
    audio = val.audio[:, :cfg.audio.clip_samples].float().to(device)
    sources = torch.stack([audio, audio[pairs]], dim=1) / 2
    frontend = SpectralFrontEnd.from_config(cfg.audio).to(device)
    prep = prepare_targets(frontend, sources, sources.sum(dim=1), cfg.mixing.binary_masks)
    query = values[column]
    embeddings = core.query_embeddings(torch.stack([query, query[pairs]], dim=1).to(device))
    out = core(prep["log_mag"], embeddings)
    core.train(was_training)
    noise = out["noise_logits"]
    if not noise.numel():
        return {}
    b, n, t = sources.shape
    energy = frontend.warp(frontend.stft(sources.reshape(b * n, t)).abs().reshape(b, n, *prep["spec"].shape[-2:])) ** 2
    w = prep["weights"]
    q, z = torch.sigmoid(out["query_logits"].float()), torch.sigmoid(noise.float())
    claimed = z.sum(dim=1, keepdim=True).clamp(max=1.0)
    share = (w * energy * claimed).sum() / (w * energy).sum().clamp_min(1e-12)
    combined = (q.unsqueeze(2) + z.unsqueeze(1)).clamp(max=1.0)  # (B, N, H, F, T)
    with_noise = weighted_bce(combined, prep["targets"].unsqueeze(2).expand_as(combined), w.unsqueeze(2))
    return {"val_nit_noise_share": float(share), "val_nit_noise_mean": float(z.sum(dim=1).mean()),
            "val_nit_bce_query": float(weighted_bce(q, prep["targets"], w).mean()),
            "val_nit_bce_query_noise": float(with_noise.min(dim=2).values.mean())}


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


