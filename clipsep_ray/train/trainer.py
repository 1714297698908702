"""The training driver: ``TorchTrainer`` over the streaming shards, resumable by run name.

``train(cfg)`` builds the Ray Data pipeline (``data.shards.training_dataset``), the
deterministic validation set, and a ``TorchTrainer`` (DDP: gloo on CPU, NCCL on GPU)
whose workers run :func:`clipsep_ray.train.worker.train_loop_per_worker`. Re-running with
the same ``run.name`` and ``run.storage_path`` resumes from the latest checkpoint (Ray
Train V2); ``run.max_failures`` restarts dead workers from the last checkpoint.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Sequence

from clipsep_ray import storage
from clipsep_ray.config import Config, ConfigError, flatten, save_config

if TYPE_CHECKING:
    from clipsep_ray.train.worker import StepHook


def validation_set(cfg: Config, val_source, text_uri: str | None):
    """Deterministic validation mixtures (docs/METHOD.md, "Evaluation protocol"): c = n // 2, halved,
    pairs by index."""
    import torch

    from clipsep_ray.data.shards import eval_rows
    from clipsep_ray.evaluation.protocol import eval_pairs
    from clipsep_ray.train.loop import ValSet

    # Validation text queries use the training template ("a photo of [label]"), not the evaluation ensemble.
    rows = eval_rows(val_source, cfg, limit=cfg.data.val_clips, text_embeddings=text_uri, ensemble=False,
                     endpoint=cfg.data.s3_endpoint or None)
    n = len(rows["audio"])
    if n < 2:
        raise ConfigError(f"validation needs at least 2 clips, {val_source} gave {n} (data.val_uri, data.val_clips)")
    text = torch.as_tensor(rows["text_query"]) if "text_query" in rows else None
    labels = torch.as_tensor(rows["label_id"]) if "label_id" in rows else None
    return ValSet(torch.as_tensor(rows["audio"]), torch.as_tensor(rows["image_query"]), text,
                  torch.as_tensor(eval_pairs(n, labels=rows.get("label"))), labels)


def ray_storage(path: str, endpoint: str | None):
    """(storage_path, pyarrow filesystem or None): s3:// with an endpoint override gets its own filesystem."""
    if path.startswith("s3://") and endpoint:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http" if endpoint.startswith("http:") else "https",
                               region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        return path[len("s3://"):], fs
    return (os.path.abspath(path) if "://" not in path else path), None


def planned_rows(cfg: Config) -> int:
    """Rows of a planned training pass (0: stream): every step's batch, and a few batches to
    spare for rows that fail to prepare (a short pass restarts from its first row)."""
    return (cfg.train.max_steps + 4) * cfg.train.batch_size if cfg.data.planned_pass else 0


#: What a resumed run may change: where it reads and writes, how long it runs and on what. The rest
#: must match its checkpoints: a new model shape failed inside every worker, and a new learning rate
#: or weight decay was silently replaced by the optimiser state's (and recorded as used).
RESUMABLE = ("run.", "data.", "inference.", "query.clip_pretrained", "query.text_cache_size", "model.channels_last",
             "train.max_steps", "train.decay_steps", "train.checkpoint_every", "train.val_every", "train.log_every",
             "train.num_workers", "train.use_gpu", "train.precision", "train.shuffle_buffer",
             "train.ema_decay")  # a run that had no average starts one from its weights


def check_resume(cfg: Config, endpoint: str | None) -> int:
    """The step a run of this ``run.name`` resumes from (0: a new run), after checking that ``cfg``
    changes nothing but :data:`RESUMABLE` fields of its newest checkpoint's config (ConfigError)."""
    from clipsep_ray.models.checkpoint import FILENAME, read_checkpoint

    run_dir = storage.join_uri(cfg.run.storage_path, cfg.run.name)
    fs, root = storage.url_to_fs(run_dir, endpoint)
    try:
        steps = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False) if "step_" in p.rsplit("/", 1)[-1])
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for name in reversed(steps):
        uri = storage.join_uri(run_dir, name, FILENAME)
        if storage.exists(uri, endpoint):
            break
    else:
        return 0
    with storage.endpoint_env(endpoint):
        payload = read_checkpoint(uri)
    # Through Config: a checkpoint written before a field existed has that field's default.
    before, now = flatten(Config.from_dict(payload["config"]).to_dict()), flatten(cfg.to_dict())
    changed = [f"{k}: {before[k]!r} -> {now[k]!r}" for k in sorted(before) if before[k] != now[k]
               and not k.startswith(RESUMABLE) and not (k == "model.labels" and not before[k])]
    if changed:
        raise ConfigError(f"run '{cfg.run.name}' at {run_dir} resumes from {name}, trained with other settings: "
                          f"{'; '.join(changed)}. Resume with its values, or start a new run (run.name=...)")
    return int(payload.get("extra", {}).get("step", 0))


def with_label_vocabulary(cfg: Config, text_uri: str, endpoint: str | None) -> Config:
    """``cfg`` with ``model.labels`` set to the text embeddings' labels, sorted (kept when given and
    covering them all), checked against ``model.num_labels``."""
    from clipsep_ray.data.shards import cached_text_embeddings

    found = sorted(cached_text_embeddings(text_uri, False, endpoint))
    labels = cfg.model.labels or found
    missing = sorted(set(found) - set(labels))
    if missing:
        raise ConfigError(f"model.labels lacks labels of {text_uri}: {', '.join(map(repr, missing[:5]))}")
    if len(labels) > cfg.model.num_labels:
        raise ConfigError(f"model.num_labels is {cfg.model.num_labels}, and the data has {len(labels)} labels")
    return cfg.override({"model.labels": labels})


def train(cfg: Config, *, address: str | None = None, hooks: Sequence[StepHook] = (),
          callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train as ``cfg`` says; returns a summary with the latest and best checkpoint URIs and metrics.

    ``hooks`` run in every worker after every step (see ``train.worker.StepHook``); ``callbacks``
    are Ray Train callbacks of the run (a sweep's trial passes Tune's ``TuneReportCallback``).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from clipsep_ray.data.schema import text_embeddings_uri
    from clipsep_ray.data.shards import PrepStats, ingest_options, split_shards, training_dataset
    from clipsep_ray.models.registry import model_class
    from clipsep_ray.runtime import cluster_cpus, init_ray, worker_thread_env
    from clipsep_ray.train.worker import train_loop_per_worker

    if not cfg.data.train_uri:
        raise ConfigError("data.train_uri is not set: give the embedded shards to train on (--data)")
    endpoint = storage.endpoint_url(cfg.data.s3_endpoint or None)
    text_uri = text_embeddings_uri(cfg.data.train_uri, cfg.data.text_embeddings or None, endpoint)
    columns = model_class(cfg.model).training_columns(cfg.train.mode)
    if columns & {"text_query", "label_id"} and not text_uri:
        raise ConfigError(f"train.mode={cfg.train.mode} needs text embeddings of labels: none at "
                          f"{cfg.data.train_uri}/_text_embeddings.parquet (run embed on labelled shards)")
    if "label_id" in columns:
        cfg = with_label_vocabulary(cfg, text_uri, endpoint)
    check_resume(cfg, endpoint)
    init_ray(address)
    train_src, val_src = cfg.data.train_uri, cfg.data.val_uri
    if not val_src and cfg.data.val_clips > 0:
        train_src, val_src = split_shards(cfg.data.train_uri, cfg.data.val_fraction, cfg.train.seed, endpoint)
        if not val_src or not train_src:
            raise ConfigError(f"{cfg.data.train_uri}: too few shards to hold out data.val_fraction for validation; "
                              f"set data.val_uri")
    needs_text = bool(columns & {"text_query", "label_id"})
    stats = PrepStats()  # rows prepared / skipped (corrupt audio, missing embeddings), across all data tasks
    ds = training_dataset(train_src, cfg, cfg.train.seed, endpoint=endpoint, stats=stats,
                          text_embeddings=text_uri if needs_text else None,
                          min_rows_per_pass=cfg.data.min_rows_per_pass, prep_cpus=cfg.data.prep_cpus,
                          cache_mb=cfg.data.cache_mb, planned_rows=planned_rows(cfg))
    val = validation_set(cfg, val_src, text_uri) if cfg.data.val_clips > 0 and val_src else None
    storage_path, fs = ray_storage(cfg.run.storage_path, endpoint)
    workers = cfg.train.num_workers
    threads = max(1, int(cluster_cpus() // max(1, workers)))
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"config": cfg.to_dict(), "val": val, "hooks": list(hooks)},
        datasets={"train": ds}, dataset_config=ray.train.DataConfig(execution_options={"train": ingest_options(ds)}),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=cfg.train.use_gpu,
                                               resources_per_worker={"CPU": cfg.run.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.run.name, storage_path=storage_path, storage_filesystem=fs,
            # Train V2 patches the workers' print to tee into its logger as well, so every
            # progress line reached the terminal twice (issue 14): plain prints, printed once.
            worker_runtime_env={"env_vars": {**worker_thread_env(threads), "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
            callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.num_to_keep,
                                                         checkpoint_score_attribute="val_sdr" if val else "step",
                                                         checkpoint_score_order="max")),
    )
    run_dir = storage.join_uri(cfg.run.storage_path, cfg.run.name)
    save_config(cfg, f"{run_dir}/config.yaml", endpoint)  # before: written only by a run that ended well
    result = trainer.fit()
    best = result.checkpoint
    if val and result.best_checkpoints:
        best = max(result.best_checkpoints, key=lambda cm: _score(cm[1]))[0]
    summary = {"run": cfg.run.name, "storage_path": cfg.run.storage_path, "metrics": result.metrics,
               "latest_checkpoint": _uri(result.checkpoint, cfg), "best_checkpoint": _uri(best, cfg),
               "data": stats.snapshot()}
    if summary["data"]["rows_skipped"]:
        print(f"[train] skipped {summary['data']['rows_skipped']} unreadable rows: {summary['data']['reasons']}",
              flush=True)
    storage.write_text(f"{run_dir}/summary.json", json.dumps(summary, indent=1, default=str), endpoint)
    return summary


def _score(metrics: dict) -> float:
    """A checkpoint's validation SDR for choosing the best; NaN (weights gone non-finite) ranks last:
    ``max`` keeps its first item when the key is NaN, which made a NaN checkpoint the best."""
    sdr = metrics.get("val_sdr", float("-inf"))
    return float("-inf") if sdr != sdr else sdr


def _uri(checkpoint, cfg: Config) -> str | None:
    if checkpoint is None:
        return None
    return ("s3://" + checkpoint.path) if cfg.run.storage_path.startswith("s3://") and "://" not in checkpoint.path \
        else checkpoint.path
