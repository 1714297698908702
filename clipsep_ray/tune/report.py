"""A sweep's report, from its study alone: ``<storage>/<study>/report/``.

``trials.csv`` / ``trials.md`` (every trial, best objective first), ``best.yaml`` (the best
trial's resolved config: ``clipsep-ray train --config best.yaml`` trains it), PNGs (the
optimisation history, parameter importances, the objective against ``model.num_masks`` and
against ``model.noise_heads``) and ``index.html``, one offline page with the pictures inlined.
"""
from __future__ import annotations

import base64
import csv
import html
import io
from typing import Any

from clipsep_ray import storage as store
from clipsep_ray.config import Config
from clipsep_ray.tune import study as st

PICTURES = {"history.png": "optimisation history", "importances.png": "parameter importances",
            "num_masks.png": "objective vs model.num_masks", "noise_heads.png": "objective vs model.noise_heads"}
FILES = ("trials.csv", "trials.md", "best.yaml", "index.html", *PICTURES)


def trial_rows(study) -> list[dict[str, Any]]:
    """One row per trial: number, state, objective, parameters, run, steps, Tune seconds; sorted
    by the objective (best first), trials without a value last in number order."""
    sweep = study.user_attrs.get("sweep", {})
    names = list(sweep.get("space", {}))
    maximize = sweep.get("objective", {}).get("mode", "max") == "max"
    rows = []
    for t in study.get_trials(deepcopy=False):
        max_steps = t.params.get("train.max_steps", _base(study, t).get("train", {}).get("max_steps"))
        value = t.value if t.values else None
        rows.append({"trial": t.number, "state": t.state.name, "objective": value,
                     **{n: t.params.get(n) for n in names}, "run": t.user_attrs.get("run", ""),
                     "steps": t.user_attrs.get("step"), "start_step": t.user_attrs.get("start_step"),
                     "tune_s": t.user_attrs.get("time_total_s"), "retry_of": t.user_attrs.get("retry_of"),
                     "note": _note(t, max_steps)})
    scored = [r for r in rows if st.finite(r["objective"])]
    scored.sort(key=lambda r: -r["objective"] if maximize else r["objective"])
    return scored + [r for r in rows if not st.finite(r["objective"])]


def _base(study, trial) -> dict:
    """The base config ``trial`` ran with: its own (recorded when suggested), else the study's (the
    latest session's, which a sweep file changed since may make another)."""
    return trial.user_attrs.get("base_config") or study.user_attrs.get("base_config", {})


def _note(t, max_steps: int | None) -> str:
    if t.user_attrs.get("interrupted"):
        return "interrupted (driver died); retried as a new trial"
    if t.user_attrs.get("fail_reason"):
        return t.user_attrs["fail_reason"]
    step = t.user_attrs.get("step")
    if t.state.name == "COMPLETE" and max_steps and st.finite(step) and step < max_steps:
        return f"stopped by ASHA at step {step}"
    if t.user_attrs.get("retry_of") is not None:
        return f"retry of trial {t.user_attrs['retry_of']} (resumed from step {t.user_attrs.get('start_step')})"
    return ""


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def overhead(study, rows: list[dict]) -> dict[str, float | None]:
    """Driver wall time of the finished sessions against the sum of the trials' Tune time."""
    wall = sum(s["wall_s"] for s in study.user_attrs.get("sessions", []))
    trials = sum(r["tune_s"] for r in rows if st.finite(r["tune_s"]))
    return {"sweep_wall_s": round(wall, 1), "trials_sum_s": round(trials, 1),
            "overhead_frac": round(wall / trials - 1.0, 3) if wall and trials else None}


def best_config(study, where=None) -> tuple[Config, Any] | tuple[None, None]:
    """The best trial's resolved config (named ``<study>-best``), or (None, None) without one.
    ``where`` (a predicate on a trial's params) restricts the choice, e.g. to NIT trials."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if st.finite(t.value) and (where is None or where(t.params))]
    if not done:
        return None, None
    maximize = study.user_attrs.get("sweep", {}).get("objective", {}).get("mode", "max") == "max"
    best = (max if maximize else min)(done, key=lambda t: t.value)
    cfg = Config.from_dict(_base(study, best)).override(dict(best.params)).validate()
    cfg.run.name = store.safe_component(f"{study.study_name}-best")
    return cfg, best


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def pictures(study, rows: list[dict]) -> dict[str, tuple[bytes, str]]:
    """name -> (PNG bytes, a note: empty, or why the picture has no data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = study.user_attrs.get("sweep", {})
    metric = sweep.get("objective", {}).get("metric", "objective")
    maximize = sweep.get("objective", {}).get("mode", "max") == "max"
    scored = sorted((r for r in rows if st.finite(r["objective"])), key=lambda r: r["trial"])
    out: dict[str, tuple[bytes, str]] = {}

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if scored:
        xs, ys = [r["trial"] for r in scored], [r["objective"] for r in scored]
        run = [(max if maximize else min)(ys[: i + 1]) for i in range(len(ys))]
        ax.plot(xs, ys, "o", label="trial")
        ax.step(xs, run, where="post", label="best so far")
        ax.legend()
    ax.set(xlabel="trial", ylabel=metric, title="optimisation history")
    out["history.png"] = (_png(fig), "" if scored else "no trial has an objective value yet")
    plt.close(fig)

    note = ""
    try:
        import optuna

        imp = optuna.importance.get_param_importances(study)
    except Exception as exc:  # fewer than 2 complete trials, or a space of one value
        imp, note = {}, f"not available: {exc}"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if imp:
        ax.barh(list(imp)[::-1], list(imp.values())[::-1])
    ax.set(xlabel="importance (fANOVA)", title="parameter importances")
    out["importances.png"] = (_png(fig), note)
    plt.close(fig)

    base = study.user_attrs.get("base_config", {})
    for field, file in (("model.num_masks", "num_masks.png"), ("model.noise_heads", "noise_heads.png")):
        fixed = base.get("model", {}).get(field.split(".")[1])
        xs = [r[field] if field in r and r[field] is not None else fixed for r in scored]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if scored:
            ax.plot(xs, [r["objective"] for r in scored], "o")
        ax.set(xlabel=field, ylabel=metric, title=f"{metric} vs {field}")
        searched = field in sweep.get("space", {})
        out[file] = (_png(fig), "" if searched else f"{field} is not searched (fixed at {fixed})")
        plt.close(fig)
    return out


def _html(name: str, rows: list[dict], columns: list[str], pics: dict, summary: dict) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in columns) + "</tr>" for r in rows)
    figs = "".join(
        f"<figure><img alt='{html.escape(PICTURES[n])}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{html.escape(PICTURES[n])}{(' - ' + html.escape(note)) if note else ''}</figcaption></figure>"
        for n, (png, note) in pics.items())
    facts = "".join(f"<li>{html.escape(k)}: {html.escape(_cell(v))}</li>" for k, v in summary.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>sweep {html.escape(name)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}figure{display:inline-block}</style>"
            f"</head><body><h1>sweep {html.escape(name)}</h1><ul>{facts}</ul>{figs}"
            f"<h2>trials (best first)</h2><table><tr>{head}</tr>{body}</table></body></html>")


def write_report(root: str, name: str, storage, endpoint: str | None = None) -> dict[str, Any]:
    """Write the report of study ``name`` under ``<root>/report``; returns the best trial and the files."""
    from clipsep_ray.config import save_config

    study = st.load_study(storage, name)
    rows = trial_rows(study)
    sweep = study.user_attrs.get("sweep", {})
    columns = ["trial", "state", "objective", *sweep.get("space", {}), "steps", "tune_s", "run", "note"]
    out = f"{root.rstrip('/')}/report"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else columns)
    writer.writeheader()
    writer.writerows(rows)
    store.write_text(f"{out}/trials.csv", buf.getvalue(), endpoint)
    cfg, best = best_config(study)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary = {"objective": f"{sweep.get('objective', {}).get('metric')} ({sweep.get('objective', {}).get('mode')})",
               "trials": ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none",
               "best trial": best.number if best else None, "best objective": best.value if best else None,
               **overhead(study, rows)}
    md = [f"# sweep {name}", ""] + [f"- {k}: {_cell(v)}" for k, v in summary.items()] + ["", _markdown(rows, columns)]
    store.write_text(f"{out}/trials.md", "\n".join(md), endpoint)
    if cfg is not None:
        save_config(cfg, f"{out}/best.yaml", endpoint)
    else:
        store.write_text(f"{out}/best.yaml", "# no trial has finished with an objective value yet\n", endpoint)
    pics = pictures(study, rows)
    for file, (png, _) in pics.items():
        store.write_bytes(f"{out}/{file}", png, endpoint)
    store.write_text(f"{out}/index.html", _html(name, rows, columns, pics, summary), endpoint)
    return {"report": out, "best": {"trial": best.number, "objective": best.value, "params": best.params,
                                    "run": best.user_attrs.get("run")} if best else None,
            "counts": counts, **overhead(study, rows)}


def report_study(storage_uri: str, name: str, study_storage: str | None = None) -> dict[str, Any]:
    """``clipsep-ray tune report``: the report of an existing study."""
    root = st.sweep_root(storage_uri, name)
    url = st.study_url(root, study_storage) if study_storage else _existing_sqlite(root)
    return write_report(root, store.safe_component(name), st.open_storage(url))


def _existing_sqlite(root: str) -> str:
    from clipsep_ray.config import ConfigError

    if not store.exists(f"{root}/{st.STUDY_FILE}"):
        raise ConfigError(f"no study at {root}/{st.STUDY_FILE} (give --study-storage for a server)")
    return st.study_url(root, None)

