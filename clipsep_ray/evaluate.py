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

EVAL_SAMPLES = 65280


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


@torch.no_grad()
def evaluate_rows(model, cfg: Config, rows: dict, pairs, device="cpu", train_data: str = "",
                  bounds: bool = True) -> tuple[list, list]:
    """Score one mixture per target clip. Shared by ``evaluate`` and the training loop's validation.

    rows: ``audio`` (M, T) at the model rate, ``query`` (M, D) image queries, optional
    ``text_query`` (M, D), ``label_id`` (M,), ``clip_id``, ``label``; pairs: (M,) interference
    index per target. Soft masks in fp32 whatever the checkpoint's inference settings, so
    results do not depend on the hardware. ``bounds`` adds the mixture and oracle-mask rows.
    Returns (summary rows, per-clip rows).
    """
    inference = replace(cfg.inference, soft_masks=True, precision="fp32")
    frontend = SpectralFrontEnd.from_config(cfg.audio).to(device)
    audio = torch.as_tensor(rows["audio"]).float()
    n = len(audio)
    kinds: dict[str, Any] = {}
    if isinstance(model, PITSep):
        kinds["none"] = None
    elif isinstance(model, LabelSep):
        if "label_id" in rows:
            kinds["label"] = model.embed_labels(torch.as_tensor(rows["label_id"]).long().to(device))
    else:
        kinds["image"] = torch.as_tensor(rows["query"]).float()
        if rows.get("text_query") is not None:
            kinds["text"] = torch.as_tensor(rows["text_query"]).float()
    method = method_name(cfg)
    clip_ids = rows.get("clip_id") or list(range(n))
    labels = rows.get("label") or [None] * n
    per_clip, results = [], {}
    n_eval = min(EVAL_SAMPLES, audio.shape[1])

    def record(name: str, query: str, i: int, r: dict) -> None:
        key = (name, query)
        results.setdefault(key, {"sdr": [], "sdri": [], "si_sdr": [], "skipped": 0})
        if r["skipped"]:
            results[key]["skipped"] += 1
            return
        for k in ("sdr", "sdri", "si_sdr"):
            results[key][k].append(r[k][0])
        per_clip.append({"method": name, "query": query, "clip_id": clip_ids[i], "label": labels[i],
                         "sdr": r["sdr"][0], "sdri": r["sdri"][0], "si_sdr": r["si_sdr"][0]})

    for i, j in enumerate(list(pairs)):
        sources = torch.stack([audio[i], audio[j]]) / 2
        mixture = sources.sum(0)
        if bounds:
            record("mixture", "none", i, evaluate_mixture(sources, mixture.expand(2, -1), mixture, n_eval))
            for name, binary in (("oracle-ibm", True), ("oracle-irm", False)):
                est = _oracle(frontend, sources.to(device), mixture.to(device), binary).cpu()
                record(name, "none", i, evaluate_mixture(sources, est, mixture, n_eval))
        for kind, q in kinds.items():
            proj = None if q is None else model.project(torch.stack([q[i], q[j]]).to(device)).float()
            est = separate(model, frontend, mixture, proj, inference, device)
            r = _best_order(sources, est, mixture, n_eval) if q is None else evaluate_mixture(
                sources, est, mixture, n_eval)
            record(method, kind, i, r)
    summary = []
    for (name, query), v in results.items():
        s, si, ss = summarize(v["sdr"], v["skipped"]), summarize(v["sdri"]), summarize(v["si_sdr"])
        summary.append({"method": name, "query": query, "train_data": train_data if name not in (
            "mixture", "oracle-ibm", "oracle-irm") else "", "sdr_mean": s["mean"], "sdr_sem": s["sem"],
            "sdr_median": s["median"], "sdri_mean": si["mean"], "si_sdr_mean": ss["mean"], "n": s["n"],
            "skipped": v["skipped"]})
    return summary, per_clip


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
                        text_embeddings: str | None = None, train_data: str = "", device: str = "cpu") -> list[dict]:
    """Evaluate a checkpoint on the shards at ``data_uri`` (embedded; labelled for text queries)."""
    from clipsep_ray.data import schema
    from clipsep_ray.data.shards import eval_rows
    from clipsep_ray.models.checkpoint import load_checkpoint

    model, cfg, _ = load_checkpoint(checkpoint)
    model = model.to(device)
    text_uri = text_embeddings or schema.join_uri(data_uri, schema.TEXT_EMBEDDINGS_NAME)
    rows = eval_rows(data_uri, cfg, limit=limit, text_embeddings=text_uri if schema.exists(text_uri) else None,
                     ensemble=True)
    if len(rows["audio"]) < 2:
        raise ValueError(f"evaluation needs at least 2 clips, {data_uri} gave {len(rows['audio'])}")
    summary, per_clip = evaluate_rows(model, cfg, rows, eval_pairs(len(rows["audio"]), labels=rows.get("label")),
                                      device, train_data)
    for r in summary:
        r["rows_skipped_unreadable"] = rows["skipped"]
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
    args = p.parse_args(argv)
    summary = evaluate_checkpoint(args.checkpoint, args.data, args.out, limit=args.limit, train_data=args.train_data,
                                  device=args.device)
    print(markdown_table(summary))
    return summary


if __name__ == "__main__":
    main_evaluate(sys.argv[1:])
