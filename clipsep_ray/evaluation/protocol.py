"""The evaluation protocol (docs/METHOD.md, "Evaluation protocol"), as a table like the paper's.

One mixture per test clip: the clip plus an interference clip chosen deterministically
from its index, both from their centres, each halved, no random gain. Estimates come
from soft masks through the one inference function ``separate`` (noise heads are not
used: no oracle choice among them). BSSEval SDR over the published 4.08 s
(``audio.eval_samples``, or the whole clip when shorter) against the halved sources;
pairs with a silent reference or estimate are skipped and counted. Bounds in the same
table: the unprocessed mixture and the oracle ideal binary / ratio masks on the model's
own STFT and warp.

Both engines (``evaluation.local`` in one process, ``evaluation.distributed`` on Ray Data)
and the training loop's validation score mixtures with :func:`score_mixtures` and
summarise them with :func:`summarize_records`, so they give the same table.
Summary rows: method, query_kind, train_data, sdr_mean, sdr_sem, sdr_median, sdri_mean,
si_sdr_mean, n, skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.config import Config
from clipsep_ray.metrics import evaluate_mixture, summarize
from clipsep_ray.models.base import QUERY_KINDS, SeparationModel
from clipsep_ray.separate import separate

BOUND_METHODS = ("mixture", "oracle-ibm", "oracle-irm")
PER_CLIP_COLUMNS = ("method", "query_kind", "clip_id", "label", "sdr", "sdri", "si_sdr")


@dataclass
class EvalResult:
    """What either engine returns: the table, the scored mixtures, and the rows it could not read."""

    summary: list[dict]
    per_clip: list[dict]
    rows_ok: int = 0
    rows_skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    engine: str = "local"


def eval_pairs(n: int, labels: list | None = None, seed: int = 0) -> np.ndarray:
    """(n,) interference clip for each target clip: deterministic from (n, labels, seed).

    Uniform over the other clips; where labels are known, over clips of another class
    (a same-class pair has no right answer for a text query), falling back to any
    other clip when every clip shares the label.
    """
    if n < 2:
        raise ValueError(f"evaluation mixtures need at least 2 clips, got {n}")
    rng = np.random.default_rng(seed)
    out = np.empty(n, np.int64)
    for i in range(n):
        for _ in range(1000):
            j = (i + 1 + int(rng.integers(n - 1))) % n
            if labels is None or labels[j] != labels[i] or labels[i] is None:
                break
        out[i] = j
    return out


def _oracle(frontend: SpectralFrontEnd, sources: torch.Tensor, mixture: torch.Tensor, binary: bool) -> torch.Tensor:
    spec = frontend.stft(mixture[None])
    masks = frontend.targets(frontend.stft(sources).abs()[None], spec.abs()[:, None], binary=binary)
    return frontend.reconstruct(masks, spec, mixture.numel())[0]


def _best_order(sources: torch.Tensor, est: torch.Tensor, mixture: torch.Tensor, n_eval: int) -> dict:
    """Outputs without queries have no order: score them in the order that matches the references best."""
    a = evaluate_mixture(sources, est, mixture, n_eval)
    b = evaluate_mixture(sources, est.flip(0), mixture, n_eval)
    if a["skipped"] or b["skipped"]:
        return a if b["skipped"] else b
    return a if sum(a["sdr"]) >= sum(b["sdr"]) else b


def _query_kinds(model: SeparationModel, targets: dict, interferers: dict, device) -> dict[str, Any]:
    """Query kinds the model answers and the rows hold -> (target, interferer) embeddings, or None
    for a model without queries."""
    kinds: dict[str, Any] = {}
    for kind, column in model.query_columns.items():
        if column is None:
            kinds[kind] = None
        elif targets.get(column) is not None:
            kinds[kind] = tuple(model.query_embeddings(torch.as_tensor(np.asarray(r[column])).to(device))
                                for r in (targets, interferers))
    return kinds


@torch.no_grad()
def score_mixtures(model: SeparationModel, cfg: Config, targets: dict, interferers: dict, device="cpu",
                   bounds: bool = True) -> list:
    """Score mixture m = targets[m] + interferers[m] (each halved): one record per mixture and row kind.

    targets / interferers: column dicts of equal length M, ``audio`` (M, T) at the model
    rate, ``image_query`` (M, D), optional ``text_query`` (M, D), ``label_id`` (M,);
    targets also ``clip_id`` and ``label``. Soft masks in fp32 whatever the checkpoint's
    inference settings, so results do not depend on the hardware. ``bounds`` adds the
    mixture and oracle-mask records. Records: method, query_kind, clip_id, label, sdr,
    sdri, si_sdr (None when skipped), skipped (bool), reason.
    """
    inference = replace(cfg.inference, soft_masks=True, precision="fp32")
    frontend = SpectralFrontEnd.from_config(cfg.audio).to(device)
    a_t = torch.as_tensor(np.asarray(targets["audio"])).float()
    a_i = torch.as_tensor(np.asarray(interferers["audio"])).float()
    m = len(a_t)
    kinds = _query_kinds(model, targets, interferers, device)
    method = model.method_name(cfg.model, cfg.train.mode)
    clip_ids = list(targets["clip_id"]) if targets.get("clip_id") is not None else list(range(m))
    labels = list(targets["label"]) if targets.get("label") is not None else [None] * m
    n_eval = min(cfg.audio.eval_samples, a_t.shape[1])
    records = []

    def record(name: str, kind: str, i: int, r: dict) -> None:
        rec = {"method": name, "query_kind": kind, "clip_id": clip_ids[i], "label": labels[i], "sdr": None,
               "sdri": None, "si_sdr": None, "skipped": bool(r["skipped"]), "reason": r.get("reason") or ""}
        if not r["skipped"]:
            rec.update(sdr=float(r["sdr"][0]), sdri=float(r["sdri"][0]), si_sdr=float(r["si_sdr"][0]))
        records.append(rec)

    for i in range(m):
        sources = torch.stack([a_t[i], a_i[i]]) / 2
        mixture = sources.sum(0)
        if bounds:
            record("mixture", "none", i, evaluate_mixture(sources, mixture.expand(2, -1), mixture, n_eval))
            for name, binary in (("oracle-ibm", True), ("oracle-irm", False)):
                est = _oracle(frontend, sources.to(device), mixture.to(device), binary).cpu()
                record(name, "none", i, evaluate_mixture(sources, est, mixture, n_eval))
        for kind, q in kinds.items():
            proj = None if q is None else model.project(torch.stack([q[0][i], q[1][i]]).to(device)).float()
            est = separate(model, frontend, mixture, proj, inference, device)
            r = _best_order(sources, est, mixture, n_eval) if q is None else evaluate_mixture(
                sources, est, mixture, n_eval)
            record(method, kind, i, r)
    return records


def summarize_records(records: list[dict], train_data: str = "") -> tuple[list, list]:
    """Per-mixture records (any order) -> (summary rows: bounds first, then methods by query kind;
    per-clip rows of the scored mixtures, in clip order)."""
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r["method"], r["query_kind"]), []).append(r)

    def order(key):
        name, kind = key
        return (BOUND_METHODS.index(name) if name in BOUND_METHODS else len(BOUND_METHODS), name,
                QUERY_KINDS.index(kind) if kind in QUERY_KINDS else len(QUERY_KINDS), kind)

    summary, per_clip = [], []
    for key in sorted(groups, key=order):
        name, kind = key
        rs = sorted(groups[key], key=lambda r: (type(r["clip_id"]).__name__, r["clip_id"]))
        ok = [r for r in rs if not r["skipped"]]
        skipped = len(rs) - len(ok)
        s = summarize([r["sdr"] for r in ok], skipped)
        si, ss = summarize([r["sdri"] for r in ok]), summarize([r["si_sdr"] for r in ok])
        summary.append({"method": name, "query_kind": kind, "train_data": "" if name in BOUND_METHODS else train_data,
                        "sdr_mean": s["mean"], "sdr_sem": s["sem"], "sdr_median": s["median"],
                        "sdri_mean": si["mean"], "si_sdr_mean": ss["mean"], "n": s["n"], "skipped": skipped})
        per_clip += [{k: r[k] for k in PER_CLIP_COLUMNS} for r in ok]
    return summary, per_clip


def take_rows(rows: dict, index) -> dict:
    """Rows ``index`` of a column dict (numpy arrays, tensors or lists); None columns stay None."""
    idx = np.asarray(index, np.int64)
    out = {}
    for k, v in rows.items():
        if v is None or k in ("skipped", "failures"):
            continue
        out[k] = [v[i] for i in idx] if isinstance(v, list) else v[torch.as_tensor(idx)] if torch.is_tensor(v) \
            else np.asarray(v)[idx]
    return out


def evaluate_rows(model: SeparationModel, cfg: Config, rows: dict, pairs, device="cpu", train_data: str = "",
                  bounds: bool = True) -> tuple[list, list]:
    """Score one mixture per target clip, in one process (the local engine and the training
    loop's validation).

    rows: ``audio`` (M, T) at the model rate, ``image_query`` (M, D), optional ``text_query``
    (M, D), ``label_id`` (M,), ``clip_id``, ``label``; pairs: (M,) interference index per
    target. Returns (summary rows, per-clip rows).
    """
    n = len(rows["audio"])
    targets = take_rows(rows, np.arange(n))
    targets.setdefault("clip_id", list(range(n)))
    records = score_mixtures(model, cfg, targets, take_rows(rows, pairs), device, bounds)
    return summarize_records(records, train_data)


def markdown_table(rows: list[dict]) -> str:
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    lines = ["| method | query kind | train data | SDR mean +- SEM | SDR median | SDRi mean | SI-SDR mean | n | "
             "skipped |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['query_kind']} | {r['train_data'] or '-'} | {f(r['sdr_mean'])} +- "
                     f"{f(r['sdr_sem'])} | {f(r['sdr_median'])} | {f(r['sdri_mean'])} | {f(r['si_sdr_mean'])} | "
                     f"{r['n']} | {r['skipped']} |")
    return "\n".join(lines) + "\n"
