"""On-the-fly mix-and-separate, on the training device (plain torch; no Ray).

Every row of a batch becomes the first source of one
mixture; the other N - 1 sources are other rows of the same batch (never the row itself,
nor another row holding the same clip when ``clip_index`` is given). Each source gets a
random gain U[gain_min, gain_max), is clipped to [-1, 1] and divided by N; the mixture is
their sum. Query n belongs to source n.

Evaluation mixtures (deterministic pairs, halved, no gain) are built by
``clipsep_ray.evaluate`` (``eval_pairs``, ``score_mixtures``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from clipsep_ray.config import MixingConfig
from clipsep_ray.losses import loss_weights


def _partners(b: int, n: int, generator: torch.Generator | None, clip_index: Tensor | None,
              tries: int = 8) -> Tensor:
    """(B, N) row indices: column 0 is the row itself, columns 1.. are distinct other rows.

    Rows are put in a random order and partner k of the row at position p is the row at
    position p + s_k (mod B) for distinct random shifts s_k in [1, B): a derangement per
    column, and every row is used exactly N times. With ``clip_index`` the draw is
    repeated (up to ``tries`` times) until no mixture holds the same clip twice.
    """
    if b < n:
        raise ValueError(f"a batch of {b} rows cannot make mixtures of {n} distinct sources; "
                         f"use batch_size >= mixing.num_sources")
    gdev = generator.device if generator is not None else torch.device("cpu")
    best = None
    for _ in range(max(1, tries)):
        order = torch.randperm(b, generator=generator, device=gdev).cpu()
        shifts = (torch.randperm(b - 1, generator=generator, device=gdev).cpu()[: n - 1] + 1)
        pos = torch.arange(b)
        cols = [order] + [order[(pos + s) % b] for s in shifts]
        idx = torch.empty(b, n, dtype=torch.long)
        idx[order] = torch.stack(cols, dim=1)
        best = idx
        if clip_index is None:
            break
        ci = clip_index.detach().cpu()[idx]
        if not (ci[:, :, None] == ci[:, None, :]).sum(dim=(1, 2)).gt(n).any():
            break
    return best


def mix_batch(audio: Tensor, queries: Tensor, cfg: MixingConfig, generator: torch.Generator | None = None,
              clip_index: Tensor | None = None) -> dict[str, Tensor]:
    """Pair rows into N-source mixtures on ``audio``'s device.

    Args:
        audio: (B, T) float waveforms in [-1, 1] (B >= N).
        queries: (B, D) query embeddings, one per row (or (B, ...) of any trailing shape).
        cfg: MixingConfig (num_sources N, gain_min, gain_max).
        generator: torch.Generator (any device) for reproducible draws.
        clip_index: optional (B,) int ids; rows with equal ids are never mixed together.

    Returns:
        ``sources`` (B, N, T) gained, clipped and divided by N; ``mixture`` (B, T) = their
        sum; ``queries`` (B, N, D), query n for source n; ``index`` (B, N) rows used;
        ``gains`` (B, N).
    """
    if audio.dim() != 2:
        raise ValueError(f"audio must be (B, T), got shape {tuple(audio.shape)}")
    if queries.shape[0] != audio.shape[0]:
        raise ValueError(f"queries ({queries.shape[0]} rows) and audio ({audio.shape[0]} rows) differ in batch size")
    b, n, dev = audio.shape[0], int(cfg.num_sources), audio.device
    idx = _partners(b, n, generator, clip_index).to(dev)
    gdev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(b, n, generator=generator, device=gdev).to(dev)
    gains = cfg.gain_min + (cfg.gain_max - cfg.gain_min) * u
    sources = (audio[idx].float() * gains[..., None]).clamp(-1.0, 1.0) / n
    return {"sources": sources, "mixture": sources.sum(dim=1), "queries": queries[idx], "index": idx,
            "gains": gains}


def prepare_targets(frontend, sources: Tensor, mixture: Tensor, binary: bool = True) -> dict[str, Tensor]:
    """STFT, warp and targets for a batch of mixtures.

    Args:
        frontend: a :class:`~clipsep_ray.audio.stft.SpectralFrontEnd` on the batch's device.
        sources: (B, N, T); mixture: (B, T).

    Returns:
        ``spec`` (B, F, M) complex mixture STFT; ``mix_mag`` (B, 1, F, M) linear |X|;
        ``log_mag`` (B, 1, W, M) network input; ``targets`` (B, N, W, M) binary or ratio
        masks; ``weights`` (B, 1, W, M) = loss_weights of the warped mixture magnitude.
    """
    b, n, t = sources.shape
    spec, mix_mag, log_mag = frontend.analyse(mixture)
    src_mag = frontend.stft(sources.reshape(b * n, t)).abs().reshape(b, n, *spec.shape[-2:])
    targets = frontend.targets(src_mag, mix_mag, binary)
    weights = loss_weights(frontend.warp(mix_mag))
    return {"spec": spec, "mix_mag": mix_mag, "log_mag": log_mag, "targets": targets, "weights": weights}
