"""The in-process evaluation engine: read the test shards, score every mixture in this process."""
from __future__ import annotations

from clipsep_ray.evaluation.protocol import EvalResult, eval_pairs, evaluate_rows


def evaluate_local(checkpoint: str, data_uri, *, limit: int | None = None, text_embeddings: str | None = None,
                   train_data: str = "", device: str = "cpu", endpoint: str | None = None) -> EvalResult:
    """Evaluate ``checkpoint`` on the shards at ``data_uri`` in one process (no Ray)."""
    from clipsep_ray.config import ConfigError
    from clipsep_ray.data.shards import eval_rows
    from clipsep_ray.models.checkpoint import load_checkpoint

    model, cfg, _ = load_checkpoint(checkpoint)
    model = model.to(device)
    rows = eval_rows(data_uri, cfg, limit=limit, text_embeddings=text_embeddings, ensemble=True, endpoint=endpoint)
    n = len(rows["audio"])
    if n < 2:
        raise ConfigError(f"evaluation needs at least 2 clips, {data_uri} gave {n}")
    summary, per_clip = evaluate_rows(model, cfg, rows, eval_pairs(n, labels=rows.get("label")), device, train_data)
    reasons: dict[str, int] = {}
    for f in rows["failures"]:
        key = f["reason"].split(":", 1)[0]
        reasons[key] = reasons.get(key, 0) + 1
    return EvalResult(summary, per_clip, rows_ok=n, rows_skipped=rows["skipped"], reasons=reasons, engine="local")
