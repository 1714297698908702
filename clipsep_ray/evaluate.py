"""The evaluation protocol of REFERENCE.md, as a table like the paper's.

One mixture per test clip: the clip plus an interference clip chosen deterministically
from its index, both from their centres, each halved, no random gain. Estimates come
from soft masks through the one inference function ``separate`` (noise heads are not
used: no oracle choice among them). BSSEval SDR over the first 65,280 samples (or the
whole clip when shorter) against the halved sources; pairs with a silent reference or
estimate are skipped and counted. Bounds in the same table: the unprocessed mixture
and the oracle ideal binary / ratio masks on the model's own STFT and warp.

Outputs: ``results.json`` (rows: method, query, train_data, sdr_mean, sdr_sem,
sdr_median, sdri_mean, si_sdr_mean, n, skipped), ``results.md`` and ``per_clip.csv``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.config import Config
from clipsep_ray.metrics import evaluate_mixture, summarize
from clipsep_ray.models.clipsep import LabelSep, PITSep
from clipsep_ray.separate import separate

RAY_THRESHOLD = 2000  # test clips from which --engine auto evaluates on Ray Data


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


def method_name(cfg: Config) -> str:
    m = cfg.model
    if m.arch == "pit":
        return "PIT"
    if m.arch == "labelsep":
        return "LabelSep"
    name = {"image": "CLIPSep", "text": "CLIPSep-Text", "hybrid": "CLIPSep-Hybrid"}[cfg.train.mode]
    return name + ("-NIT" if m.noise_heads else "")


def _oracle(frontend: SpectralFrontEnd, sources: torch.Tensor, mixture: torch.Tensor, binary: bool) -> torch.Tensor:
    spec = frontend.stft(mixture[None])
    masks = frontend.targets(frontend.stft(sources).abs()[None], spec.abs()[:, None], binary=binary)
    return frontend.reconstruct(masks, spec, mixture.numel())[0]


def _best_order(sources: torch.Tensor, est: torch.Tensor, mixture: torch.Tensor, n_eval: int) -> dict:
    """PIT's outputs have no order: score them in the order that matches the references best."""
    a = evaluate_mixture(sources, est, mixture, n_eval)
    b = evaluate_mixture(sources, est.flip(0), mixture, n_eval)
    if a["skipped"] or b["skipped"]:
        return a if b["skipped"] else b
    return a if sum(a["sdr"]) >= sum(b["sdr"]) else b


BOUND_METHODS = ("mixture", "oracle-ibm", "oracle-irm")
QUERY_ORDER = ("none", "image", "text", "label")


def _kinds(model, targets: dict, interferers: dict, device) -> dict[str, Any]:
    """Query kinds this model answers -> (target queries (M, ...), interferer queries (M, ...)) or None."""
    if isinstance(model, PITSep):
        return {"none": None}
    if isinstance(model, LabelSep):
        if targets.get("label_id") is None:
            return {}
        return {"label": tuple(model.embed_labels(torch.as_tensor(np.asarray(r["label_id"])).long().to(device))
                               for r in (targets, interferers))}
    kinds = {"image": tuple(torch.as_tensor(np.asarray(r["query"])).float() for r in (targets, interferers))}
    if targets.get("text_query") is not None:
        kinds["text"] = tuple(torch.as_tensor(np.asarray(r["text_query"])).float() for r in (targets, interferers))
    return kinds


@torch.no_grad()
def score_mixtures(model, cfg: Config, targets: dict, interferers: dict, device="cpu", bounds: bool = True) -> list:
    """Score mixture m = targets[m] + interferers[m] (each halved): one record per mixture and row kind.

    targets / interferers: column dicts of equal length M, ``audio`` (M, T) at the model
    rate, ``query`` (M, D) image queries, optional ``text_query`` (M, D), ``label_id``
    (M,); targets also ``clip_id`` and ``label``. Soft masks in fp32 whatever the
    checkpoint's inference settings, so results do not depend on the hardware. ``bounds``
    adds the mixture and oracle-mask records. Records: method, query, clip_id, label, sdr,
    sdri, si_sdr (None when skipped), skipped (bool), reason.
    """
    inference = replace(cfg.inference, soft_masks=True, precision="fp32")
    frontend = SpectralFrontEnd.from_config(cfg.audio).to(device)
    a_t = torch.as_tensor(np.asarray(targets["audio"])).float()
    a_i = torch.as_tensor(np.asarray(interferers["audio"])).float()
    m = len(a_t)
    kinds = _kinds(model, targets, interferers, device)
    method = method_name(cfg)
    clip_ids = list(targets["clip_id"]) if targets.get("clip_id") is not None else list(range(m))
    labels = list(targets["label"]) if targets.get("label") is not None else [None] * m
    n_eval = min(cfg.audio.eval_samples, a_t.shape[1])
    records = []

    def record(name: str, query: str, i: int, r: dict) -> None:
        rec = {"method": name, "query": query, "clip_id": clip_ids[i], "label": labels[i], "sdr": None,
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
        groups.setdefault((r["method"], r["query"]), []).append(r)

    def order(key):
        name, query = key
        return (BOUND_METHODS.index(name) if name in BOUND_METHODS else len(BOUND_METHODS), name,
                QUERY_ORDER.index(query) if query in QUERY_ORDER else len(QUERY_ORDER), query)

    summary, per_clip = [], []
    for key in sorted(groups, key=order):
        name, query = key
        rs = sorted(groups[key], key=lambda r: (type(r["clip_id"]).__name__, r["clip_id"]))
        ok = [r for r in rs if not r["skipped"]]
        skipped = len(rs) - len(ok)
        s = summarize([r["sdr"] for r in ok], skipped)
        si, ss = summarize([r["sdri"] for r in ok]), summarize([r["si_sdr"] for r in ok])
        summary.append({"method": name, "query": query, "train_data": "" if name in BOUND_METHODS else train_data,
                        "sdr_mean": s["mean"], "sdr_sem": s["sem"], "sdr_median": s["median"],
                        "sdri_mean": si["mean"], "si_sdr_mean": ss["mean"], "n": s["n"], "skipped": skipped})
        per_clip += [{k: r[k] for k in ("method", "query", "clip_id", "label", "sdr", "sdri", "si_sdr")} for r in ok]
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


def evaluate_rows(model, cfg: Config, rows: dict, pairs, device="cpu", train_data: str = "",
                  bounds: bool = True) -> tuple[list, list]:
    """Score one mixture per target clip, in one process. Shared by ``evaluate`` and the
    training loop's validation; the Ray Data path (``evaluate_dist``) scores the same
    mixtures with :func:`score_mixtures` and gives the same table.

    rows: ``audio`` (M, T) at the model rate, ``query`` (M, D) image queries, optional
    ``text_query`` (M, D), ``label_id`` (M,), ``clip_id``, ``label``; pairs: (M,) interference
    index per target. Returns (summary rows, per-clip rows).
    """
    n = len(rows["audio"])
    targets = take_rows(rows, np.arange(n))
    targets.setdefault("clip_id", list(range(n)))
    records = score_mixtures(model, cfg, targets, take_rows(rows, pairs), device, bounds)
    return summarize_records(records, train_data)


def markdown_table(rows: list[dict]) -> str:
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    lines = ["| method | query | train data | SDR mean +- SEM | SDR median | SDRi mean | SI-SDR mean | n | skipped |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['query']} | {r['train_data'] or '-'} | {f(r['sdr_mean'])} +- "
                     f"{f(r['sdr_sem'])} | {f(r['sdr_median'])} | {f(r['sdri_mean'])} | {f(r['si_sdr_mean'])} | "
                     f"{r['n']} | {r['skipped']} |")
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: str, summary: list[dict], per_clip: list[dict]) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"), "md": os.path.join(out_dir, "results.md"),
             "csv": os.path.join(out_dir, "per_clip.csv")}
    with open(paths["json"], "w") as fh:
        json.dump(summary, fh, indent=1)
    with open(paths["md"], "w") as fh:
        fh.write(markdown_table(summary))
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["method", "query", "clip_id", "label", "sdr", "sdri", "si_sdr"])
        w.writeheader()
        w.writerows(per_clip)
    return paths


def evaluate_checkpoint(checkpoint: str, data_uri: str, out_dir: str | None = None, *, limit: int | None = None,
                        text_embeddings: str | None = None, train_data: str = "", device: str = "cpu",
                        engine: str = "auto", workers: int = 2, address: str | None = None,
                        ray_threshold: int = RAY_THRESHOLD) -> list[dict]:
    """Evaluate a checkpoint on the shards at ``data_uri`` (embedded; labelled for text queries).

    ``engine``: "local" (one process), "ray" (Ray Data, ``workers`` scoring actors; see
    ``evaluate_dist``) or "auto": Ray when the shards hold ``ray_threshold`` rows or more.
    Both give the same mixtures and the same table.
    """
    from clipsep_ray.data import schema
    from clipsep_ray.evaluate_dist import evaluate_distributed, wants_ray

    text_uri = text_embeddings or storage.join_uri(data_uri, schema.TEXT_EMBEDDINGS_NAME)
    text_uri = text_uri if storage.exists(text_uri) else None
    if engine == "auto" and address or wants_ray(engine, data_uri, None, ray_threshold, limit):
        import ray

        if not ray.is_initialized():
            ray.init(address=address, **({} if address else {"num_cpus": os.cpu_count()}))
        summary, per_clip, data = evaluate_distributed(checkpoint, data_uri, limit=limit, text_embeddings=text_uri,
                                                       train_data=train_data, workers=workers, device=device)
        skipped = data["rows_skipped"]
    else:
        from clipsep_ray.data.shards import eval_rows
        from clipsep_ray.models.checkpoint import load_checkpoint

        model, cfg, _ = load_checkpoint(checkpoint)
        model = model.to(device)
        rows = eval_rows(data_uri, cfg, limit=limit, text_embeddings=text_uri, ensemble=True)
        if len(rows["audio"]) < 2:
            raise ValueError(f"evaluation needs at least 2 clips, {data_uri} gave {len(rows['audio'])}")
        summary, per_clip = evaluate_rows(model, cfg, rows, eval_pairs(len(rows["audio"]), labels=rows.get("label")),
                                          device, train_data)
        skipped = rows["skipped"]
    for r in summary:
        r["rows_skipped_unreadable"] = skipped
    if skipped:
        print(f"[evaluate] skipped {skipped} unreadable rows of {data_uri}", flush=True)
    if out_dir:
        write_outputs(out_dir, summary, per_clip)
    return summary


def main_evaluate(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="clipsep-ray evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint URI (file or Ray checkpoint folder)")
    p.add_argument("--data", required=True, help="embedded test shards URI")
    p.add_argument("--out", required=True, help="output folder for results.json / results.md / per_clip.csv")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N clips (by clip id)")
    p.add_argument("--train-data", default="", help="tag for the train_data column (clean/noisy)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--engine", choices=["auto", "local", "ray"], default="auto",
                   help=f"local: one process; ray: Ray Data with an actor pool; auto (default): ray when the "
                        f"test shards hold at least --ray-threshold rows ({RAY_THRESHOLD})")
    p.add_argument("--ray-threshold", type=int, default=RAY_THRESHOLD)
    p.add_argument("--workers", type=int, default=2, help="scoring actors for --engine ray")
    p.add_argument("--address", default=None, help="a running Ray cluster (with --engine auto: evaluate there)")
    args = p.parse_args(argv)
    summary = evaluate_checkpoint(args.checkpoint, args.data, args.out, limit=args.limit, train_data=args.train_data,
                                  device=args.device, engine=args.engine, workers=args.workers, address=args.address,
                                  ray_threshold=args.ray_threshold)
    print(markdown_table(summary))
    return summary


if __name__ == "__main__":
    main_evaluate(sys.argv[1:])
