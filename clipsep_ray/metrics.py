"""Separation metrics and the evaluation protocol's per-mixture scoring.

BSSEval (SDR/SIR/SAR) follows ``mir_eval.separation.bss_eval_sources`` with a
512-tap distortion filter and no permutation search; it is computed with
``fast_bss_eval``'s torch backend in float64 (its NumPy backend fails under NumPy 2
when the permutation search is off).

Shapes: ``S`` sources, ``T`` samples; leading ``...`` dims are batch dims.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import fast_bss_eval
import numpy as np
import torch
from torch import Tensor

__all__ = ["bss_eval", "si_sdr", "is_silent", "summarize", "evaluate_mixture"]

FILTER_LENGTH = 512
SILENCE_THRESHOLD = 1e-5


def _as_tensor(name: str, x: Any, dtype: torch.dtype | None = None) -> Tensor:
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a tensor or array, got {type(x).__name__}") from exc
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def bss_eval(references: Any, estimates: Any) -> dict[str, Tensor]:
    """BSSEval v4-style SDR, SIR and SAR (dB), estimate ``s`` scored against reference ``s``.

    Args:
        references: (..., S, T) torch tensor or numpy array.
        estimates: (..., S, T), same shape as ``references``.

    Returns:
        ``{"sdr", "sir", "sar"}``, each a float64 tensor of shape (..., S).
    """
    ref = _as_tensor("references", references, torch.float64)
    est = _as_tensor("estimates", estimates, torch.float64)
    if ref.dim() < 2:
        raise ValueError(f"references must be (..., S, T), got shape {tuple(ref.shape)}")
    if est.shape != ref.shape:
        raise ValueError(
            f"estimates must have the shape of references {tuple(ref.shape)}, "
            f"got {tuple(est.shape)}"
        )
    if ref.shape[-1] < FILTER_LENGTH:
        raise ValueError(
            f"references must have at least {FILTER_LENGTH} samples, got {ref.shape[-1]}"
        )
    sdr, sir, sar = fast_bss_eval.bss_eval_sources(
        ref, est, filter_length=FILTER_LENGTH, compute_permutation=False
    )
    return {"sdr": sdr, "sir": sir, "sar": sar}


def si_sdr(reference: Any, estimate: Any, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SDR in dB over the last dim, after removing the mean.

    Args:
        reference: (..., T).
        estimate: (..., T), same shape.
        eps: guards the divisions for silent signals.

    Returns:
        (...) tensor (float64 for numpy/integer input, else the input dtype).
    """
    ref = _as_tensor("reference", reference)
    est = _as_tensor("estimate", estimate).to(ref.dtype)
    if est.shape != ref.shape:
        raise ValueError(
            f"estimate must have the shape of reference {tuple(ref.shape)}, "
            f"got {tuple(est.shape)}"
        )
    ref = ref - ref.mean(dim=-1, keepdim=True)
    est = est - est.mean(dim=-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / ((ref * ref).sum(-1, keepdim=True) + eps)
    target = scale * ref
    noise = est - target
    num = (target * target).sum(-1) + eps
    den = (noise * noise).sum(-1) + eps
    return 10.0 * torch.log10(num / den)


def is_silent(x: Any, threshold: float = SILENCE_THRESHOLD) -> Tensor:
    """The protocol's skip rule: ``sum |x| <= threshold`` over the last dim.

    Args:
        x: (..., T).

    Returns:
        (...) bool tensor.
    """
    return _as_tensor("x", x).abs().sum(dim=-1) <= threshold


def summarize(values: Iterable[float] | Any, skipped: int = 0) -> dict[str, Any]:
    """Mean, standard error of the mean and median of a list of scores.

    Non-finite values (e.g. an infinite SDR from an exact estimate) are left out of
    the statistics and counted under ``nonfinite`` so that the summary stays finite.

    Args:
        values: scores, any iterable/array/tensor (flattened).
        skipped: number of items skipped upstream (silent pairs), passed through.

    Returns:
        ``{"mean", "sem", "median", "n", "skipped", "nonfinite"}`` as plain Python
        floats/ints; with no finite values, mean/sem/median are ``None`` and n is 0.
        ``sem`` is ``std(ddof=1) / sqrt(n)``, 0.0 when n == 1.
    """
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    elif not isinstance(values, np.ndarray):
        values = list(values)
    arr = np.asarray(values, dtype=np.float64).ravel()
    finite = arr[np.isfinite(arr)]
    n = int(finite.size)
    out: dict[str, Any] = {
        "mean": None,
        "sem": None,
        "median": None,
        "n": n,
        "skipped": int(skipped),
        "nonfinite": int(arr.size - n),
    }
    if n:
        out["mean"] = float(finite.mean())
        out["sem"] = float(finite.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        out["median"] = float(np.median(finite))
    return out


def evaluate_mixture(
    references: Any, estimates: Any, mixture: Any, num_samples: int | None = None
) -> dict[str, Any]:
    """Score one test mixture as the evaluation protocol prescribes.

    The unprocessed mixture, used as the estimate of every source, is the baseline;
    improvements (SDRi, SI-SDRi) are relative to it. BSSEval fails on silent
    signals, so a mixture whose references, estimates or mixture contain a silent
    signal (``is_silent``) is skipped and nothing is computed.

    Args:
        references: (S, T) true sources (as mixed, e.g. halved).
        estimates: (S, T) separated estimates, estimate s for reference s.
        mixture: (T,) (or (1, T)) the mixture.
        num_samples: keep only the first ``num_samples`` samples (protocol: 65,280).

    Returns:
        Dict of per-source lists ``sdr, sir, sar, sdr_mixture, sdri, si_sdr,
        si_sdr_mixture, si_sdri`` (empty when skipped) and ``skipped: bool``.
    """
    ref = _as_tensor("references", references, torch.float64)
    est = _as_tensor("estimates", estimates, torch.float64)
    mix = _as_tensor("mixture", mixture, torch.float64)
    if ref.dim() != 2:
        raise ValueError(f"references must be (S, T), got shape {tuple(ref.shape)}")
    if est.shape != ref.shape:
        raise ValueError(
            f"estimates must have the shape of references {tuple(ref.shape)}, "
            f"got {tuple(est.shape)}"
        )
    if mix.dim() == 2 and mix.shape[0] == 1:
        mix = mix[0]
    if mix.dim() != 1 or mix.shape[0] != ref.shape[1]:
        raise ValueError(
            f"mixture must be (T,) with T = {ref.shape[1]}, got shape {tuple(mix.shape)}"
        )
    if num_samples is not None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        ref, est, mix = ref[:, :num_samples], est[:, :num_samples], mix[:num_samples]

    keys = ("sdr", "sir", "sar", "sdr_mixture", "sdri", "si_sdr", "si_sdr_mixture", "si_sdri")
    result: dict[str, Any] = {k: [] for k in keys}
    if bool(is_silent(ref).any() or is_silent(est).any() or is_silent(mix)):
        result["skipped"], result["reason"] = True, "silent reference, estimate or mixture"
        return result

    mix_est = mix.unsqueeze(0).expand_as(ref).contiguous()
    try:
        scores = bss_eval(ref, est)
        base = bss_eval(ref, mix_est)
    except RuntimeError as exc:
        # A degenerate estimate (e.g. linearly dependent on the references' filtered copies)
        # makes BSSEval's system singular: count the pair as skipped, with the reason.
        result["skipped"], result["reason"] = True, f"BSSEval failed: {str(exc).splitlines()[0][:120]}"
        return result
    si = si_sdr(ref, est)
    si_base = si_sdr(ref, mix_est)
    result.update(
        sdr=scores["sdr"].tolist(),
        sir=scores["sir"].tolist(),
        sar=scores["sar"].tolist(),
        sdr_mixture=base["sdr"].tolist(),
        sdri=(scores["sdr"] - base["sdr"]).tolist(),
        si_sdr=si.tolist(),
        si_sdr_mixture=si_base.tolist(),
        si_sdri=(si - si_base).tolist(),
    )
    result["skipped"] = False
    return result
