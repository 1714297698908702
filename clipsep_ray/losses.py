"""Training losses for CLIPSep, noise invariant training (NIT) and the PIT baseline.

Shape conventions (all tensors are torch tensors):

* ``B`` batch, ``N`` queries/sources, ``H`` noise heads, ``F`` x ``T`` spectrogram bins
  (on the log-frequency-warped grid the network predicts on).
* Mask logits and targets are ``(B, N, F, T)``; noise logits ``(B, H, F, T)``.
* Loss weights are ``(B, 1, F, T)`` (one weight map per mixture, shared by its sources).

Only plain PyTorch is used here so the module imports without Ray.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "loss_weights",
    "weighted_bce",
    "weighted_bce_with_logits",
    "clipsep_loss",
    "nit_arrangements",
    "nit_loss",
    "noise_regularizer",
    "pit_loss",
]

_PROB_EPS = 1e-7


def _check_ndim(name: str, x: Tensor, ndim: int, layout: str) -> None:
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(x.shape)}")


def _check_same_shape(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(
            f"{name} must have the same shape as {ref_name} {tuple(ref.shape)}, "
            f"got {tuple(x.shape)}"
        )


def _check_weight(weight: Tensor, ref: Tensor, ref_name: str) -> None:
    """Weight must broadcast to ``ref`` without changing ``ref``'s shape."""
    try:
        out = torch.broadcast_shapes(weight.shape, ref.shape)
    except RuntimeError:
        out = None
    if out != ref.shape:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} does not broadcast to "
            f"{ref_name} shape {tuple(ref.shape)}"
        )


def _check_batch_weight(weight: Tensor, logits: Tensor, name: str) -> None:
    """Weight for (B, N, F, T) losses: (B, 1, F, T) or (B, N, F, T)."""
    _check_ndim("weight", weight, 4, "(B, 1, F, T)")
    b, n, f, t = logits.shape
    if weight.shape[0] != b or weight.shape[2:] != (f, t) or weight.shape[1] not in (1, n):
        raise ValueError(
            f"weight must be (B, 1, F, T) = {(b, 1, f, t)} to match {name}, "
            f"got {tuple(weight.shape)}"
        )


def loss_weights(mix_mag: Tensor) -> Tensor:
    """Per-bin loss weights ``clamp(log1p(|X_mix|), 1e-3, 10)``.

    Loud bins matter more for the reconstruction, but the clamp keeps silent bins in
    play and stops a few very loud bins from dominating.

    Args:
        mix_mag: mixture magnitude, any shape, typically (B, 1, F, T).

    Returns:
        Tensor of the same shape.
    """
    return torch.clamp(torch.log1p(mix_mag), min=1e-3, max=10.0)


def weighted_bce(prob: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted binary cross-entropy on probabilities, averaged over (F, T).

    NIT adds query and noise probabilities, so this variant works in probability space.
    ``prob`` is clamped to [1e-7, 1 - 1e-7] so a saturated mask (including the sum
    capped at 1) gives a large but finite loss instead of ``inf``/``nan``.

    Args:
        prob: (..., F, T) probabilities.
        target: (..., F, T) targets in [0, 1], same shape as ``prob``.
        weight: broadcastable to ``prob`` (e.g. (B, 1, F, T) against (B, N, F, T)).

    Returns:
        (...) loss per leading index.
    """
    if prob.dim() < 2:
        raise ValueError(f"prob must be (..., F, T), got shape {tuple(prob.shape)}")
    _check_same_shape("target", target, "prob", prob)
    _check_weight(weight, prob, "prob")
    p = prob.clamp(_PROB_EPS, 1.0 - _PROB_EPS)
    tgt = target.to(p.dtype)
    bce = -(tgt * torch.log(p) + (1.0 - tgt) * torch.log1p(-p))
    return (weight * bce).mean(dim=(-2, -1))


def weighted_bce_with_logits(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted binary cross-entropy from logits, averaged over (F, T).

    Numerically stable for large logits (no sigmoid round trip).

    Args:
        logits: (..., F, T) mask logits.
        target: (..., F, T) targets in [0, 1], same shape as ``logits``.
        weight: broadcastable to ``logits``.

    Returns:
        (...) loss per leading index.
    """
    if logits.dim() < 2:
        raise ValueError(f"logits must be (..., F, T), got shape {tuple(logits.shape)}")
    _check_same_shape("target", target, "logits", logits)
    _check_weight(weight, logits, "logits")
    bce = F.binary_cross_entropy_with_logits(
        logits, target.to(logits.dtype), reduction="none"
    )
    return (weight * bce).mean(dim=(-2, -1))


def clipsep_loss(logits: Tensor, targets: Tensor, weight: Tensor) -> Tensor:
    """CLIPSep loss: mean over batch and sources of the per-source weighted BCE.

    Query ``n`` always targets source ``n``: the query says which source it wants, so
    there is no permutation.

    Args:
        logits: (B, N, F, T) mask logits, one per query.
        targets: (B, N, F, T) target masks.
        weight: (B, 1, F, T) loss weights (``loss_weights`` of the mixture magnitude).

    Returns:
        Scalar loss.
    """
    _check_ndim("logits", logits, 4, "(B, N, F, T)")
    _check_same_shape("targets", targets, "logits", logits)
    _check_batch_weight(weight, logits, "logits")
    return weighted_bce_with_logits(logits, targets, weight).mean()


def nit_arrangements(num_queries: int, num_heads: int) -> list[tuple[int, ...]]:
    """Arrangements of noise heads to queries that NIT minimises over.

    Each arrangement is a tuple ``a`` of length ``num_queries``: ``a[i]`` is the noise
    head joined to query ``i``, or -1 when query ``i`` gets no noise head. No head is
    used twice in one arrangement.

    * ``num_heads >= num_queries``: every injective assignment of distinct heads to the
      queries, P(H, N) arrangements (N = H = 2 gives (0, 1) and (1, 0), the paper's L0
      and L1). Heads left over are unused in that arrangement.
    * ``num_heads < num_queries``: every way to put each head on a distinct query; the
      remaining queries get -1. P(N, H) arrangements.
    * ``num_heads == 0``: the single arrangement ``(-1,) * num_queries``.

    The order is deterministic, with the identity arrangement (head i on query i) first.
    """
    if num_queries < 1:
        raise ValueError(f"num_queries must be >= 1, got {num_queries}")
    if num_heads < 0:
        raise ValueError(f"num_heads must be >= 0, got {num_heads}")
    if num_heads >= num_queries:
        return list(itertools.permutations(range(num_heads), num_queries))
    out = []
    # placement[h] is the query that head h joins.
    for placement in itertools.permutations(range(num_queries), num_heads):
        arr = [-1] * num_queries
        for head, query in enumerate(placement):
            arr[query] = head
        out.append(tuple(arr))
    return out


def nit_loss(
    query_logits: Tensor, noise_logits: Tensor, targets: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor]:
    """Noise invariant training loss.

    For each sample and arrangement ``a`` (see ``nit_arrangements``),
    ``L_a = mean_i WBCE(min(1, sigmoid(y_i) + sigmoid(n_{a(i)})), target_i)``, where a
    query with no head (-1) uses ``sigmoid(y_i)`` alone. The loss is the batch mean of
    ``min_a L_a``: the noise heads may soak up whatever noise the query cannot explain,
    in whichever assignment fits best, while query ``i`` always targets source ``i``.

    Args:
        query_logits: (B, N, F, T) query mask logits ``y``.
        noise_logits: (B, H, F, T) noise mask logits ``n`` (H may be 0).
        targets: (B, N, F, T) target masks.
        weight: (B, 1, F, T) loss weights.

    Returns:
        (scalar loss, (B,) long index into ``nit_arrangements(N, H)`` chosen per sample).
    """
    _check_ndim("query_logits", query_logits, 4, "(B, N, F, T)")
    _check_ndim("noise_logits", noise_logits, 4, "(B, H, F, T)")
    _check_same_shape("targets", targets, "query_logits", query_logits)
    _check_batch_weight(weight, query_logits, "query_logits")
    b, n, f, t = query_logits.shape
    if noise_logits.shape[0] != b or noise_logits.shape[2:] != (f, t):
        raise ValueError(
            f"noise_logits must be (B, H, F, T) with B, F, T = {(b, f, t)}, "
            f"got {tuple(noise_logits.shape)}"
        )
    h = noise_logits.shape[1]
    q = torch.sigmoid(query_logits)
    z = torch.sigmoid(noise_logits)
    # Each (query, head) pair's loss is computed once; arrangements then only gather
    # from this table, so the cost is O(N * H) WBCEs rather than O(#arrangements * N).
    combined = torch.clamp(q.unsqueeze(2) + z.unsqueeze(1), max=1.0)  # (B, N, H, F, T)
    tgt = targets.unsqueeze(2).expand_as(combined)
    w = weight.unsqueeze(2)
    paired = weighted_bce(combined, tgt, w)  # (B, N, H)
    alone = weighted_bce(q, targets, weight).unsqueeze(2)  # (B, N, 1)
    table = torch.cat([paired, alone], dim=2)  # column H means "no head"
    arr = torch.tensor(nit_arrangements(n, h), dtype=torch.long, device=q.device)
    arr = torch.where(arr < 0, torch.full_like(arr, h), arr)  # (A, N)
    per_arr = table[:, torch.arange(n, device=q.device).unsqueeze(0), arr]  # (B, A, N)
    losses = per_arr.mean(dim=2)  # (B, A)
    best, idx = losses.min(dim=1)
    return best.mean(), idx


def noise_regularizer(noise_logits: Tensor, lam: float = 0.1, gamma: float = 0.25) -> Tensor:
    """Penalty that stops the noise heads from explaining everything.

    ``lam * relu(mean_{b,f,t}(sum_h sigmoid(n_h)) - gamma)``: only the part of the
    average total noise mask above ``gamma`` is penalised.

    Args:
        noise_logits: (B, H, F, T) noise mask logits; H = 0 gives 0.

    Returns:
        Scalar.
    """
    _check_ndim("noise_logits", noise_logits, 4, "(B, H, F, T)")
    if noise_logits.shape[1] == 0:
        return noise_logits.new_zeros(())
    total = torch.sigmoid(noise_logits).sum(dim=1).mean()
    return lam * torch.relu(total - gamma)


def pit_loss(logits: Tensor, targets: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Permutation-invariant weighted BCE (the query-free PIT baseline).

    Per sample, the minimum over permutations ``p`` of ``mean_j WBCE(logits[p[j]],
    targets[j])``; the loss is the batch mean.

    Args:
        logits: (B, N, F, T) mask logits (no fixed source order).
        targets: (B, N, F, T) target masks.
        weight: (B, 1, F, T) loss weights, or (B, N, F, T) tied to the targets.

    Returns:
        (scalar loss, (B, N) long permutations ``perm`` such that ``logits[b, perm[b]]``
        is aligned with ``targets[b]``).
    """
    _check_ndim("logits", logits, 4, "(B, N, F, T)")
    _check_same_shape("targets", targets, "logits", logits)
    _check_batch_weight(weight, logits, "logits")
    n = logits.shape[1]
    # pair[b, i, j]: estimate i scored against target j.
    est = logits.unsqueeze(2).expand(-1, -1, n, -1, -1)
    tgt = targets.unsqueeze(1).expand(-1, n, -1, -1, -1)
    pair = weighted_bce_with_logits(est, tgt, weight.unsqueeze(1))  # (B, N, N)
    perms = torch.tensor(
        list(itertools.permutations(range(n))), dtype=torch.long, device=logits.device
    )  # (P, N)
    cols = torch.arange(n, device=logits.device).unsqueeze(0)
    losses = pair[:, perms, cols].mean(dim=2)  # (B, P)
    best, idx = losses.min(dim=1)
    return best.mean(), perms[idx]
