"""NIT against no NIT after a sweep: retrain the best of each at equal steps, compare on the test set.

    python benchmarks/bench_nit.py --storage sweeps --study nit-noisy --test-uri sweep-data/store/noisy/embedded/test \
        [--steps 1500] [--workers 2] [--out bench-nit]

From the study (``clipsep-ray tune`` with ``tuning/nit-noisy.yaml``) it takes the best trial with
``model.noise_heads > 0`` (CLIPSep-NIT) and the same configuration with ``model.noise_heads`` 0
(CLIPSep: without noise heads the regulariser and warm-up do nothing), retrains both from
scratch for ``--steps`` steps (the learning-rate schedule ends there for both), keeps each run's validation-best checkpoint and scores both on the same test mixtures
with the evaluation protocol. The comparison is paired: for every test mixture (a target clip
and its query kind) the SDRi of NIT minus that of CLIPSep; the mean difference, its standard
error and how many mixtures NIT wins. A run whose folder already holds ``results.json`` is
reused, so an interrupted benchmark resumes. Writes OUT/comparison.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time


def paired(a_rows: list[dict], b_rows: list[dict], kind: str) -> dict:
    """Per-mixture SDRi of ``a`` minus ``b`` for query kind ``kind``, paired by target clip."""
    a = {r["clip_id"]: float(r["sdri"]) for r in a_rows if r["query_kind"] == kind}
    b = {r["clip_id"]: float(r["sdri"]) for r in b_rows if r["query_kind"] == kind}
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        raise ValueError(f"fewer than 2 test mixtures scored by both runs for {kind} queries")
    d = [a[c] - b[c] for c in common]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    return {"query_kind": kind, "mixtures": len(d), "mean_diff_db": round(mean, 3),
            "sem_db": round(sd / math.sqrt(len(d)), 3), "wins": sum(x > 0 for x in d),
            "only_in_one": len(set(a) ^ set(b))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", default="sweeps")
    p.add_argument("--study", default="nit-noisy")
    p.add_argument("--study-storage", default=None)
    p.add_argument("--test-uri", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="bench-nit")
    args = p.parse_args(argv)

    from clipsep_ray.demo import _copy_checkpoint
    from clipsep_ray.evaluation import evaluate_checkpoint
    from clipsep_ray.evaluation.protocol import BOUND_METHODS
    from clipsep_ray.train.trainer import train
    from clipsep_ray.tune import study as st
    from clipsep_ray.tune.report import best_config

    root = st.sweep_root(args.storage, args.study)
    study = st.load_study(st.open_storage(st.study_url(root, args.study_storage)), args.study)
    out = os.path.abspath(args.out)
    runs, result = {}, {"study": args.study, "steps": args.steps, "workers": args.workers}
    cfg_nit, best = best_config(study, lambda p: p.get("model.noise_heads", 0) > 0)
    if cfg_nit is None:
        raise SystemExit(f"study {args.study!r} has no complete trial with noise heads")
    # Without noise heads the other NIT knobs (regulariser, warm-up) do nothing: the best no-NIT
    # configuration is the same one with model.noise_heads 0, whichever trials the sweep drew.
    for name, cfg in (("nit", cfg_nit), ("no-nit", cfg_nit.override({"model.noise_heads": 0}))):
        cfg = cfg.override({"train.max_steps": args.steps, "train.decay_steps": args.steps,
                            "train.num_workers": args.workers, "run.name": f"{args.study}-{name}",
                            "run.storage_path": f"{out}/runs"}).validate()
        done_file = os.path.join(out, name, "results.json")
        t0 = time.time()
        if not os.path.exists(done_file):
            summary = train(cfg)
            ckpt = os.path.join(out, "checkpoints", name)
            _copy_checkpoint(summary["best_checkpoint"] or summary["latest_checkpoint"], ckpt)
            rows = evaluate_checkpoint(ckpt, args.test_uri, os.path.join(out, name), train_data="noisy").summary
            with open(done_file, "w") as fh:
                json.dump({"trial": best.number, "params": {**best.params, "model.noise_heads": cfg.model.noise_heads},
                       "sweep_value": best.value if cfg.model.noise_heads else None,
                       "train_eval_s": round(time.time() - t0, 1), "summary": rows}, fh, indent=1)
        with open(done_file) as fh:
            runs[name] = json.load(fh)
        with open(os.path.join(out, name, "per_clip.csv")) as fh:
            runs[name]["per_clip"] = list(csv.DictReader(fh))
    for name, run in runs.items():
        result[name] = {k: run[k] for k in ("trial", "params", "sweep_value", "train_eval_s")}
        result[name]["test"] = {r["query_kind"]: {"sdri_mean": r["sdri_mean"], "sdr_sem": r.get("sdr_sem")}
                                for r in run["summary"] if r["method"] not in BOUND_METHODS}
    result["paired_nit_minus_no_nit"] = [paired(runs["nit"]["per_clip"], runs["no-nit"]["per_clip"], kind)
                                         for kind in ("text", "image")]
    with open(os.path.join(out, "comparison.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    print(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
