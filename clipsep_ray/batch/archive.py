"""Separate a whole archive on Ray Data: exactly-once outputs, resumable, flat memory, a manifest.

``separate_archive`` lists the inputs, skips those already done for the same checkpoint and
queries, streams the rest through decode -> separate (actor pool) -> encode (``batch.stages``),
and records one manifest row per input only after all of its outputs exist:
``OUTPUT_URI/_manifest.parquet`` and ``_manifest.csv`` (input, relative_path, status, error,
duration_s, sample_rate, channels, outputs, seconds, checkpoint, queries).

Exactly once: outputs appear under their final names only when complete; ``_job.json``
records the checkpoint and queries, and a run with others into the same OUTPUT_URI is refused
unless ``overwrite``; temporary files (``_tmp/`` and writers' hidden ``.*.tmp`` files) of a
killed run are removed before anything else, and ``_tmp/`` again at the end.
"""
from __future__ import annotations

import io
import json
import math
import os
import threading
import time
from functools import partial
from typing import Callable, Sequence

from clipsep_ray import storage
from clipsep_ray.batch import stages
from clipsep_ray.batch.inputs import JOB, MANIFEST, MANIFEST_CSV, TMP, ArchiveInput, largest_first, list_inputs

FORMATS = ("flac", "wav")
PIPELINES = ("auto", "staged", "fused")
COLUMNS = ("input", "relative_path", "status", "error", "duration_s", "sample_rate", "channels", "outputs",
           "seconds", "checkpoint", "queries")


class ArchiveError(ValueError):
    """A job that must not start (another checkpoint or query set in OUTPUT_URI, a bad format)."""


def _check_job(output_uri: str, job: dict, overwrite: bool, endpoint) -> dict | None:
    """The previous job record when it matches; refuse a different one unless ``overwrite``."""
    uri = storage.join_uri(output_uri, JOB)
    old = json.loads(storage.read_bytes(uri, endpoint)) if storage.exists(uri, endpoint) else None
    def key(j: dict) -> tuple:  # the queries as a set: in another order they name the same outputs
        return j.get("checkpoint_sha256"), j.get("format"), sorted(j.get("queries") or [])

    same = old is not None and key(old) == key(job)
    if old is not None and not same and not overwrite:
        raise ArchiveError(f"{output_uri} holds outputs of checkpoint {old.get('checkpoint')} with queries "
                           f"{old.get('queries')} ({old.get('format')}); this run asks for {job['checkpoint']} with "
                           f"{job['queries']} ({job['format']}): use another OUTPUT_URI, or --overwrite to replace them")
    return old if same else None


def _remove_leftovers(output_uri: str, endpoint) -> int:
    """Temporary files of a run that was killed: ``_tmp/``, the writers' hidden temp files and S3
    multipart uploads it left unfinished."""
    fs, root = storage.url_to_fs(output_uri, endpoint)
    aborted = _abort_uploads(fs, root)
    if not fs.exists(root):
        return aborted
    gone = [p for p in fs.find(root) if p[len(root):].lstrip("/").startswith(f"{TMP}/")
            or storage.TEMP_NAME.match(p.rsplit("/", 1)[-1])]
    for p in gone:
        fs.rm_file(p)
    if fs.exists(f"{root.rstrip('/')}/{TMP}"):
        fs.rm(f"{root.rstrip('/')}/{TMP}", recursive=True)
    if "://" not in storage.normalize_uri(output_uri):  # a local output folder a killed writer left empty
        for folder in {os.path.dirname(p) for p in gone}:
            while folder.startswith(root.rstrip("/") + "/") and os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
                folder = os.path.dirname(folder)
    return len(gone) + aborted


def _abort_uploads(fs, root: str) -> int:
    """Abort the unfinished multipart uploads under ``root`` on S3: an output of 100 MiB or more goes
    up in parts, and a writer killed meanwhile leaves its parts stored (and billed) but invisible to a
    listing. A store that does not let this job list them (ListBucketMultipartUploads) keeps them."""
    if not hasattr(fs, "call_s3"):
        return 0
    bucket, _, key = root.partition("/")
    query, aborted = {"Bucket": bucket, "Prefix": key.rstrip("/") + "/" if key else ""}, 0
    try:
        while True:
            page = fs.call_s3("list_multipart_uploads", **query)
            for upload in page.get("Uploads", []):
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            query.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])
    except PermissionError:
        return aborted


def read_manifest(output_uri: str, endpoint=None) -> list[dict]:
    import pyarrow.parquet as pq

    uri = storage.join_uri(output_uri, MANIFEST)
    if not storage.exists(uri, endpoint):
        return []
    return pq.read_table(io.BytesIO(storage.read_bytes(uri, endpoint))).to_pylist()


def write_manifest(output_uri: str, rows: list[dict], endpoint=None) -> None:
    """Both manifest files, each replaced atomically."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    schema = pa.schema([("input", pa.string()), ("relative_path", pa.string()), ("status", pa.string()),
                        ("error", pa.string()), ("duration_s", pa.float64()), ("sample_rate", pa.int64()),
                        ("channels", pa.int64()), ("outputs", pa.list_(pa.string())), ("seconds", pa.float64()),
                        ("checkpoint", pa.string()), ("queries", pa.list_(pa.string()))])
    rows = sorted(rows, key=lambda r: r["relative_path"])
    table = pa.Table.from_pylist([{k: r.get(k) for k in COLUMNS} for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(storage.join_uri(output_uri, MANIFEST), buf.getvalue(), endpoint)
    flat = table.set_column(7, "outputs", pa.array([json.dumps(r["outputs"]) for r in table.to_pylist()]))
    flat = flat.set_column(10, "queries", pa.array([json.dumps(r["queries"]) for r in table.to_pylist()]))
    buf = io.BytesIO()
    pacsv.write_csv(flat, buf)
    storage.write_bytes(storage.join_uri(output_uri, MANIFEST_CSV), buf.getvalue(), endpoint)


def _is_done(row: dict | None, item: ArchiveInput, output_uri: str, endpoint) -> bool:
    """A previous row stands for ``item`` only when it is done, for this very input (another archive
    run into the same OUTPUT_URI may have had a file of the same relative path), and its outputs all
    exist under this OUTPUT_URI (a copied output folder's rows name the original's files). Compared as
    paths inside their filesystems, so ``s3a://`` and ``s3://`` spellings are one object."""
    def path(uri: str) -> str:
        return storage.url_to_fs(uri, endpoint)[1]

    if not row or row["status"] != "done" or not row["outputs"]:
        return False
    if path(storage.without_query(row["input"])) != path(storage.without_query(item.uri)):  # re-signed: the same
        return False
    root = path(output_uri).rstrip("/") + "/"
    return all(path(u).startswith(root) and storage.exists(u, endpoint) for u in row["outputs"])


#: Inputs with float copies in ``_tmp/`` per model actor in the staged pipeline (plus 2): one being
#: separated and one waiting for each actor, and the decode and encode under way.
TEMP_INPUTS_PER_ACTOR = 2


def _pipeline(todo: list[ArchiveInput], *, checkpoint: str, sha256: str, names: list[str], projections, model_sr: int,
              output_uri: str, fmt: str, actors: int, gpus_per_actor: float, cpus_per_actor: float,
              task_cpus: float, block_seconds: float, object_store_mb: float | None, mode: str, env: dict,
              temp_inputs: int | None, run_stats: dict):
    """The Ray Data pipeline's rows, each as its input completes. Staged: at most ``temp_inputs``
    inputs (default :data:`TEMP_INPUTS_PER_ACTOR` per actor, and 2) have float copies in ``_tmp/``
    at once; ``run_stats["temp_inputs"]`` gets their peak when the rows are all read."""
    import ray
    from ray.data import DataContext
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver prints its own progress
    if object_store_mb:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=int(object_store_mb * (1 << 20)))
    rows = [{"input": i.uri, "relative_path": i.relative_path, "out_dir": i.out_dir, "key": i.key, "status": "ok",
             "error": "", "sample_rate": 0, "channels": 0, "duration_s": 0.0, "outputs": "[]", "seconds": 0.0,
             **{f"{s}_rss_mb": 0.0 for s in stages.STAGES}}
            for i in todo]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    device = "cuda" if gpus_per_actor > 0 else "cpu"
    actor_env, tasks = runtime_envs(cpus_per_actor, env)
    pool = {"batch_size": 1, "num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor,
            "compute": ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors), initial_size=max(1, actors)),
            **actor_env}
    model = {"checkpoint": checkpoint, "sha256": sha256, "names": names, "projections": projections,
             "output_uri": output_uri, "device": device, "block_seconds": block_seconds}
    if mode == "fused":
        yield from _rows(ds.map_batches(stages.SeparateFile, **pool, fn_constructor_kwargs={**model, "fmt": fmt}))
        return
    # On the driver's node (which lives as long as the job: never a spot worker's), restarted if it dies.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    slots = ray.remote(num_cpus=0, max_restarts=-1, scheduling_strategy=here)(stages.TempSlots).remote(
        temp_inputs or TEMP_INPUTS_PER_ACTOR * actors + 2)
    decode = partial(stages.decode, model_sr=model_sr, output_uri=output_uri, block_seconds=block_seconds,
                     slots=slots)
    encode = partial(stages.encode, names=names, model_sr=model_sr, output_uri=output_uri, fmt=fmt,
                     block_seconds=block_seconds)
    ds = ds.map_batches(stages.per_row(decode, "decode"), batch_size=1, num_cpus=task_cpus, **tasks)
    ds = ds.map_batches(stages.Separate, **pool, fn_constructor_kwargs=model)
    ds = ds.map_batches(stages.dropping_temporaries(stages.per_row(encode, "encode"), output_uri, slots),
                        batch_size=1, num_cpus=task_cpus, **tasks)
    yield from _rows(ds)
    try:
        run_stats["temp_inputs"] = ray.get(slots.stats.remote(), timeout=30)
    except (ray.exceptions.RayError, TimeoutError):  # a figure for the summary, not worth failing a finished job
        run_stats["temp_inputs"] = None


def runtime_envs(cpus_per_actor: float, env: dict) -> tuple[dict, dict]:
    """``map_batches`` options of the model actors and of the CPU tasks: ``env`` (the explicit S3
    endpoint) for both; and for actors of more than 1 CPU, the math libraries sized to them.

    Ray sizes a worker's math libraries to 1 thread for fractional or single CPUs, and through the
    environment, never ``set_num_threads`` (runtime.py). Nothing when not needed: a runtime
    environment of its own keeps a worker off Ray's prestarted ones (actors started 0.6-0.8 s later
    on 2 cores)."""
    from clipsep_ray.runtime import worker_thread_env

    threads = worker_thread_env(max(1, math.ceil(cpus_per_actor))) if cpus_per_actor > 1 else {}
    actors = {"runtime_env": {"env_vars": {**threads, **env}}} if threads or env else {}
    return actors, ({"runtime_env": {"env_vars": dict(env)}} if env else {})


def _rows(ds):
    """The rows, each as soon as its block is done. ``iter_rows`` prefetches a batch: a file's row
    reached the driver only when the next file was done too (12 s late for a 3-minute paper file),
    so progress and the manifest lagged a file behind."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        yield from stages.rows_of(batch)


def separate_archive(checkpoint: str, queries: Sequence[str], input_uri: str, output_uri: str, *, fmt: str = "flac",
                     actors: int | None = None, gpus_per_actor: float | None = None, cpus_per_actor: float = 1.0,
                     task_cpus: float = 0.5, address: str | None = None, endpoint: str | None = None,
                     overwrite: bool = False, block_seconds: float = 30.0, object_store_mb: float | None = None,
                     pipeline: str = "auto", temp_inputs: int | None = None, log: Callable[[str], None] = print
                     ) -> dict:
    """Separate every audio/video file under ``input_uri`` into ``output_uri``; returns the summary
    (inputs, done, failed, already_done, separated, ignored, audio_hours, wall_s, failures, pipeline,
    peak_rss_mb per stage).

    ``pipeline``: "staged" (decode and encode in CPU tasks, the model in the actors), "fused" (each
    actor decodes, separates and encodes its inputs in one pass) or "auto": staged when the model
    actors have GPUs, fused on CPUs. ``actors`` None: as many as the cluster holds
    (:func:`actor_count`). ``temp_inputs`` (staged): inputs whose float copies may be in ``_tmp/``
    at once (default 2 per actor, and 2); the summary's ``temp_inputs`` gives the slots and the peak.
    """
    t0 = time.time()
    if pipeline not in PIPELINES:
        raise ArchiveError(f"--pipeline must be one of {', '.join(PIPELINES)}, not {pipeline!r}")
    if fmt not in FORMATS:
        raise ArchiveError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if actors is not None and actors < 1:
        raise ArchiveError(f"--actors must be at least 1, not {actors}")
    # An explicit endpoint reaches what takes none (the checkpoint's loading here, every stage's
    # reads and writes in the workers) through the environment: here for these calls, there in
    # the stages' runtime environment.
    explicit, endpoint = endpoint, storage.endpoint_url(endpoint)
    output_uri, checkpoint = storage.normalize_uri(output_uri), storage.normalize_uri(checkpoint)
    with storage.endpoint_env(explicit):
        sha256, names, projections, model_sr, weight_bytes = _check_model(checkpoint, queries, fmt)
    job = {"checkpoint": checkpoint, "checkpoint_sha256": sha256, "queries": names, "format": fmt}
    if projections is None:  # a model with fixed outputs (PIT): it takes no queries
        log(f"[archive] {checkpoint} separates fixed sources ({', '.join(names)}), not queries: --query "
            f"{' --query '.join(repr(q) for q in queries)} is not used")
    inputs, ignored = list_inputs(input_uri, output_uri, endpoint)
    try:
        rows, kept = _resume(output_uri, job, inputs, overwrite, endpoint, log)
    except Exception as exc:  # a missing bucket, refused access, a file in the way, a read-only file system
        if not storage.is_storage_fault(exc):
            raise
        raise ArchiveError(f"cannot use OUTPUT_URI {output_uri}: {type(exc).__name__}: {exc}") from None
    todo = largest_first([i for i in inputs if i.relative_path not in rows])
    already = len(rows)
    skipped = sum(ignored.values())
    log(f"[archive] {len(inputs)} inputs ({already} already done, {len(todo)} to separate"
        + (f"; {skipped} file{'s' * (skipped != 1)} ignored, not an audio or video extension it reads: "
           + ", ".join(f"{ext} ({n})" for ext, n in sorted(ignored.items(), key=lambda kv: -kv[1])) if skipped else "")
        + ")")
    run = {"separated": 0, "pipeline": None, "actors": 0, "peak_rss_mb": {s: 0.0 for s in stages.STAGES}}
    try:
        if todo:
            run = _separate(todo, rows, job, projections=projections, model_sr=model_sr, output_uri=output_uri,
                            actors=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor,
                            task_cpus=task_cpus, actor_mb=actor_memory_mb(weight_bytes), block_seconds=block_seconds,
                            object_store_mb=object_store_mb, pipeline=pipeline, address=address, endpoint=endpoint,
                            temp_inputs=temp_inputs,
                            env={storage.S3_ENDPOINT_ENV: explicit} if explicit else {}, kept=kept, log=log)
    except BaseException as failure:  # failed or interrupted: record the inputs done so far all the same
        try:
            _finish(output_uri, {**kept, **rows}, endpoint)
        except Exception as exc:  # the job's own error (often the same storage fault) is the one to see
            log(f"[archive] the manifest could not be written after the failure: {type(exc).__name__}: {exc}")
        else:
            log(f"[archive] {'interrupted' if isinstance(failure, KeyboardInterrupt) else 'stopped'}: "
                f"{sum(r['status'] == 'done' for r in rows.values())} of {len(inputs)} inputs done and recorded; "
                "the same command finishes the rest")
        raise
    _finish(output_uri, {**kept, **rows}, endpoint)
    failures = [(r["input"], r["error"]) for r in rows.values() if r["status"] != "done"]
    return {"inputs": len(inputs), "done": len(inputs) - len(failures), "failed": len(failures),
            "already_done": already, "ignored": skipped, "failures": failures, "output_uri": output_uri,
            "audio_hours": round(sum(r["duration_s"] or 0 for r in rows.values()) / 3600, 4),
            "wall_s": round(time.time() - t0, 1), **run}


def _finish(output_uri: str, rows: dict, endpoint) -> None:
    """The manifest of every row so far, and no temporary file left (no float copy of an input in
    ``_tmp/`` until a re-run; one a task still writes after an interruption goes at the next start)."""
    write_manifest(output_uri, list(rows.values()), endpoint)
    _remove_leftovers(output_uri, endpoint)


def _check_model(checkpoint: str, queries: Sequence[str], fmt: str):
    """A bad checkpoint, query or clashing query names fail here, before any work: (the file's
    identity, the output names, their (Q, k) float32 projections for the model replicas (None for
    fixed outputs), model rate, bytes of the model's weights)."""
    from clipsep_ray.separate import Separator, output_files, tensor_bytes

    sep = Separator.from_checkpoint(checkpoint, device="cpu")
    names, proj = sep.projections(list(queries))
    output_files("x", names, fmt)
    weights = tensor_bytes(*sep.model.state_dict().values())
    return (sep.checkpoint_sha256, names, None if proj is None else proj.cpu().numpy(), sep.cfg.audio.sample_rate,
            weights)


def _resume(output_uri: str, job: dict, inputs: list[ArchiveInput], overwrite: bool, endpoint, log
            ) -> tuple[dict, dict]:
    """Check the job record, clear what a killed run left, record this job; (the manifest rows of
    inputs already done (all their outputs there) for the same checkpoint and queries, the rows of
    inputs this listing does not hold, kept: an archive run in parts lost the other parts' rows,
    and then redid their model work)."""
    previous = _check_job(output_uri, job, overwrite, endpoint)
    if previous is None and overwrite:  # replacing another job's outputs: none of them may linger
        _clear_outputs(output_uri, inputs, endpoint)
    removed = _remove_leftovers(output_uri, endpoint)
    if removed:
        log(f"[archive] removed {removed} temporary files of an interrupted run")
    old = {r["relative_path"]: r for r in read_manifest(output_uri, endpoint)} if previous else {}
    storage.write_text(storage.join_uri(output_uri, JOB), json.dumps(job, indent=1), endpoint)
    listed = {i.relative_path for i in inputs}
    return ({i.relative_path: old[i.relative_path] for i in inputs
             if _is_done(old.get(i.relative_path), i, output_uri, endpoint)},
            {rel: row for rel, row in old.items() if rel not in listed})


def _clear_outputs(output_uri: str, inputs: list[ArchiveInput], endpoint) -> None:
    """Before ``--overwrite`` records its job: the outputs the old manifest lists, then the manifest
    itself (so none of its rows can pass for the new job's if this run is killed too), and every
    audio file in this listing's output folders (what a run killed before its first manifest
    write left unlisted: ``x/cat.flac`` of an old query set beside the new ``x/dog.flac``)."""
    fs, root = storage.url_to_fs(output_uri, endpoint)
    if not fs.exists(root):
        return
    listed = {storage.url_to_fs(u, endpoint)[1] for r in read_manifest(output_uri, endpoint)
              for u in r["outputs"] or []}
    keep = {storage.url_to_fs(i.uri, endpoint)[1] for i in inputs}  # an INPUT_URI inside OUTPUT_URI
    folders = {i.out_dir for i in inputs}
    root = root.rstrip("/")
    for path in fs.find(root):
        rel = path[len(root) + 1:]
        ours = rel in (MANIFEST, MANIFEST_CSV) or path in listed or (
            "/" in rel and rel.rsplit("/", 1)[0] in folders and rel.rsplit(".", 1)[-1].lower() in FORMATS)
        if ours and path not in keep:
            fs.rm_file(path)


#: Peak resident memory of a stage process (Ray worker, torch, the audio blocks) with a small
#: model: a tiny fused actor 790 MB, decode and encode tasks 718-783 MB (2-minute 44.1 kHz stereo
#: input); the weights add about 4x their size (paper, 116 MB of weights: 1,183 MB per actor).
PROCESS_MB = 800
WEIGHT_FACTOR = 4


def actor_memory_mb(weight_bytes: int) -> float:
    """What one model actor needs, in MB, for a model with ``weight_bytes`` of weights."""
    return PROCESS_MB + WEIGHT_FACTOR * weight_bytes / 2**20


def actor_count(requested: int | None, *, mode: str, files: int, cpus_per_actor: float, task_cpus: float,
                gpus_per_actor: float, cluster_cpus: float, cluster_gpus: float,
                actor_mb: float = 0.0, cluster_mb: float = float("inf")) -> int:
    """``requested`` (or, when None, as many model actors as the cluster holds), at most one per input.

    With GPUs, one per ``gpus_per_actor`` of them; on CPUs, one per ``cpus_per_actor``; and never
    more than the cluster's memory for tasks (``cluster_mb``, Ray's ``memory`` resource) holds at
    ``actor_mb`` each. The staged pipeline keeps a decode and an encode task's CPUs (``task_cpus``
    each) and memory free of actors, or its tasks would wait forever. The default was 1 actor of
    1 CPU: a laptop's job used one of its cores while ``clipsep-ray separate`` used them all. The
    count is the cluster's size now: an autoscaling cluster that would grow needs ``--actors``.
    """
    if requested is not None:
        return max(1, min(requested, files))
    staged = mode == "staged"
    free = cluster_cpus - (2 * task_cpus if staged else 0.0)
    fit = math.floor(free / cpus_per_actor + 1e-9) if cpus_per_actor > 0 else files
    if gpus_per_actor > 0:
        fit = min(fit, math.floor(cluster_gpus / gpus_per_actor + 1e-9))
    if actor_mb > 0:
        fit = min(fit, math.floor((cluster_mb - (2 * PROCESS_MB if staged else 0.0)) / actor_mb + 1e-9))
    return max(1, min(fit, files))


def gpu_share(gpus_per_actor: float | None, actors: int | None, cluster_gpus: float) -> float:
    """GPUs per model actor: ``gpus_per_actor`` when given; else none without GPUs, a whole one
    each, or a share when ``actors`` asks for more actors than the cluster has GPUs (``--actors 2``
    on one GPU: half each; a whole one each left the second actor waiting for the whole job, as
    Ray Data waits for its pool's actors without a limit)."""
    if gpus_per_actor is not None:
        return gpus_per_actor
    if not cluster_gpus:
        return 0.0
    if not actors or actors <= cluster_gpus:
        return 1.0
    # A share must fit on one GPU: 3 actors on 2 GPUs are 2 on one and 1 on the other, half each
    # (2/3 each left the third waiting); floored to Ray's 0.0001 so shares never sum past a GPU.
    return math.floor(10000 / math.ceil(actors / cluster_gpus)) / 10000


def _separate(todo: list[ArchiveInput], rows: dict, job: dict, *, actors: int | None, gpus_per_actor: float | None,
              cpus_per_actor: float, task_cpus: float, actor_mb: float, pipeline: str, address: str | None,
              output_uri: str, endpoint, log, kept: dict, **pipeline_kw) -> dict:
    """Run the pipeline over ``todo``, adding a manifest row to ``rows`` per input as it completes
    (the manifest also keeps the ``kept`` rows of inputs not in this listing)."""
    from clipsep_ray.runtime import cluster_cpus, cluster_gpus, cluster_memory_mb, init_ray

    init_ray(address)
    gpus = gpu_share(gpus_per_actor, actors, cluster_gpus())
    if gpus > 0 and not cluster_gpus() and actors is None:  # Ray Data would wait for them without end
        raise ArchiveError(f"the model actors ask for {gpus:g} GPU each and the cluster has none; a cluster that "
                           "adds GPU nodes when asked needs --actors")
    mode = pipeline if pipeline != "auto" else ("staged" if gpus > 0 else "fused")
    actors = actor_count(actors, mode=mode, files=len(todo), cpus_per_actor=cpus_per_actor, task_cpus=task_cpus,
                         gpus_per_actor=gpus, cluster_cpus=cluster_cpus(), cluster_gpus=cluster_gpus(),
                         actor_mb=actor_mb, cluster_mb=cluster_memory_mb())
    log(f"[archive] {actors} model actor{'s' * (actors > 1)} ({cpus_per_actor:g} CPU"
        + (f", {gpus:g} GPU" if gpus else "") + f", about {actor_mb / 1024:.1f} GB each), {mode} pipeline")
    peak = {s: 0.0 for s in stages.STAGES}
    separated, stats = 0, {}
    results = _pipeline(todo, checkpoint=job["checkpoint"], sha256=job["checkpoint_sha256"], names=job["queries"],
                        output_uri=output_uri, fmt=job["format"], gpus_per_actor=gpus, mode=mode, actors=actors,
                        cpus_per_actor=cpus_per_actor, task_cpus=task_cpus, run_stats=stats, **pipeline_kw)
    with _Recorder(output_uri, rows, kept, endpoint, _Progress(todo, log)) as recorder:
        for r in _actors_started(results):
            ok = r["status"] == "ok"
            separated += ok
            for s in stages.STAGES:
                peak[s] = max(peak[s], float(r[f"{s}_rss_mb"]))
            recorder.add({
                "input": r["input"], "relative_path": r["relative_path"], "status": "done" if ok else "failed",
                "error": r["error"], "duration_s": float(r["duration_s"]) if ok else None,
                "sample_rate": int(r["sample_rate"]) or None, "channels": int(r["channels"]) or None,
                "outputs": json.loads(r["outputs"]) if ok else [], "seconds": round(float(r["seconds"]), 3),
                "checkpoint": job["checkpoint"], "queries": job["queries"]}, float(r["duration_s"] or 0.0))
            if not ok:
                log(f"[archive] failed: {r['input']}: {r['error']}")
    return {"separated": separated, "pipeline": mode, "actors": actors,
            "peak_rss_mb": {k: round(v, 1) for k, v in peak.items()}, **stats}


class _Recorder:
    """Adds each finished input's row to ``rows``; from a thread of its own, shows the progress line
    and (every ``every`` seconds) writes the manifest when either is behind. Both waited for the next
    row before: while an hours-long file ran, the rows finished before it were neither written (a
    kill lost them) nor shown."""

    def __init__(self, output_uri: str, rows: dict, kept: dict, endpoint, progress: "_Progress", every: float = 10.0):
        self.output_uri, self.rows, self.kept, self.endpoint, self.progress = output_uri, rows, kept, endpoint, progress
        self.every, self.lock, self.stop, self.dirty = every, threading.Lock(), threading.Event(), False
        self.thread = threading.Thread(target=self._loop, name="archive-manifest", daemon=True)

    def __enter__(self) -> "_Recorder":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:  # the caller writes the final manifest (_finish)
        self.stop.set()
        self.thread.join()

    def add(self, row: dict, audio_s: float) -> None:
        with self.lock:
            self.rows[row["relative_path"]] = row
            self.dirty = True
            self.progress.update(row["relative_path"], audio_s)

    def _loop(self) -> None:
        written = time.time()
        while not self.stop.wait(min(2.0, self.every)):
            with self.lock:
                self.progress.show(force=False)
            if time.time() - written >= self.every:
                self._write()
                written = time.time()

    def _write(self) -> None:
        with self.lock:
            if not self.dirty:
                return
            snapshot, self.dirty = [*self.kept.values(), *self.rows.values()], False
        try:
            write_manifest(self.output_uri, snapshot, self.endpoint)
        except Exception as exc:  # a storage fault: the next write (or the final one) tries again
            self.dirty = True
            self.progress.log(f"[archive] the manifest could not be written: {type(exc).__name__}: {exc}")


def _actors_started(results):
    """``results``, with a model actor that fails in its constructor (a checkpoint replaced since
    the job read it, a GPU out of memory) told as an ArchiveError naming the reason, not as Ray's
    traceback of its actor pool."""
    from ray.exceptions import RayActorError

    try:
        yield from results
    except RayActorError as exc:
        if not exc.actor_init_failed:
            raise
        reason = str(exc).strip().splitlines()[-1]  # the constructor's exception: "module.Class: message"
        raise ArchiveError(f"a model actor could not start: {reason}") from None


class _Progress:
    """Files done of total, hours of audio, throughput as a multiple of real time, and an ETA from
    the bytes left where the listing gave every size (else from the files left): counted in files,
    an archive with its hours-long files first said 43,920 s where 1,440 s were left."""

    def __init__(self, todo: list[ArchiveInput], log: Callable[[str], None]):
        self.total, self.log, self.t0, self.done, self.audio_s = len(todo), log, time.time(), 0, 0.0
        self.sizes = {i.relative_path: i.size for i in todo}
        self.bytes_total = sum(self.sizes.values()) if None not in self.sizes.values() else None
        self.bytes_done, self.shown, self.last = 0, 0, 0.0

    def update(self, relative_path: str, audio_s: float) -> None:
        self.done += 1
        self.audio_s += audio_s
        self.bytes_done += self.sizes.get(relative_path) or 0
        self.show(force=self.done == self.total)

    def show(self, force: bool) -> None:
        """The line, when a file was done since the last one and 2 s have passed (or ``force``)."""
        now = time.time()
        if self.done == self.shown or not force and now - self.last < 2:
            return
        self.shown, self.last = self.done, now
        el = max(1e-6, now - self.t0)
        if self.bytes_total and self.bytes_done:
            eta = el / self.bytes_done * (self.bytes_total - self.bytes_done)
        else:
            eta = el / self.done * (self.total - self.done)
        self.log(f"[archive] {self.done}/{self.total} files, {self.audio_s / 3600:.3f} h of audio, "
                 f"{self.audio_s / el:.1f}x real time, ETA {eta:.0f} s")
