"""``ClipSepModel``: the model replicas. Windows of concurrent requests share U-Net calls.

Each request runs the one inference path (``Separator.analyse`` + ``synthesise`` /
``separate_file``, hence ``separate_stream``'s two halves) in a worker thread; its U-Net pass is
replaced by a hook that hands each group of windows to :meth:`ClipSepModel.features_batch`, a
``@serve.batch`` method on the replica's event loop, which concatenates the groups of several
requests into one U-Net call. The analysis of an upload (its windows' spectra and U-Net
features) is kept (a byte-bounded LRU) under its separation id: a re-query runs only
``synthesise`` on it, so it costs the projections, the masks and the iSTFT, not the STFT or
the U-Net.

Ids are ``<replica tag>.<random hex>``; a replica "loads" each id it serves through
``@serve.multiplexed`` so re-queries sent with ``multiplexed_model_id=id`` are routed to it,
and a replica that gets another's id says so (the ingress then retries) rather than a 404.
"""
from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from ray import serve

from clipsep_ray.audio.io import RateError, to_pcm16
from clipsep_ray.models.query import QueryError
from clipsep_ray.separate import Analysis
from clipsep_ray.serve.cache import ByteLRU
from clipsep_ray.serve.limits import ApiError, Limits, TempArea

PROBE_QUERY = "a sound"
#: How long a passed health probe answers /healthz for (Serve probes every health_check_period_s, 10 s).
HEALTH_FRESH_S = 15.0


def pcm16_stems(stems) -> dict[str, np.ndarray]:
    """Stems as 16-bit PCM, the sample format of every answer (WAV and FLAC): half the bytes of
    float32 on the way back to the ingress (a 5 s 16 kHz answer: 320 instead of 640 KB)."""
    return {name: to_pcm16(stem) for name, stem in stems.items()}


def check_servable(sep, checkpoint: str) -> None:
    """A ValueError for a model that takes no text queries: one with fixed outputs (PIT), whose stems
    are never the queries (every request failed after the U-Net while /healthz said 200), or LabelSep."""
    fixed = sep.model.output_names()
    if fixed is not None:
        raise ValueError(f"{checkpoint} separates fixed sources ({', '.join(fixed)}), not queries: the service "
                         "answers text queries; serve a CLIPSep checkpoint")
    if not sep.model.text_queries:  # LabelSep: its replicas failed their first health check
        raise ValueError(f"{checkpoint} is a {type(sep.model).__name__} model, queried by label ids, not text: the "
                         "service answers text queries; serve a CLIPSep checkpoint")


def _timing(t0: float, t1: float) -> dict[str, float]:
    """The replica's part of a request in ms: the queries' embeddings (t0 -> t1), then the separation."""
    return {"queries": 1000 * (t1 - t0), "separate": 1000 * (time.perf_counter() - t1)}


def replica_device(device: str, reserved_gpus: list) -> str:
    """The replica's device: ``device``, where "auto" means a GPU only when the replica reserved one
    (Ray's ``get_gpu_ids``, whether its options came from the args or a config's ``deployments``).
    A replica that reserved none can still see the machine's GPUs (Ray leaves CUDA_VISIBLE_DEVICES
    alone for actors without GPUs), and replicas that took one unreserved would crowd onto it."""
    return ("cuda" if reserved_gpus else "cpu") if device == "auto" else device


def _reserved_gpus() -> list:
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except Exception:
        return []


class KeepBudget:
    """Bytes that the analyses being kept by a replica's requests in flight may hold together (the
    re-query cache's size): each request's own bound let 32 concurrent uploads hold 16 GB."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used, self.lock = max_bytes, 0, threading.Lock()

    def take(self, n: int) -> bool:
        with self.lock:
            if self.used + n > self.max_bytes:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self.lock:
            self.used -= n


class Keeper:
    """An analysis's batches as they stream through the synthesis, held while the replica's
    :class:`KeepBudget` has room for them, else dropped as they pass (then the upload cannot be
    re-queried): an upload too long to be cached was held whole all the same (990 MB for 10
    minutes at 48 kHz, per concurrent request)."""

    def __init__(self, batches, budget: KeepBudget):
        self.batches, self.budget, self.held, self.size = batches, budget, [], 0

    def __iter__(self):
        for batch in self.batches:
            if self.held is not None:
                if self.budget.take(batch.nbytes):
                    self.size += batch.nbytes
                    self.held.append(batch)
                else:
                    self.drop()
            yield batch

    def drop(self) -> None:
        self.budget.give(self.size)
        self.held, self.size = None, 0

    def kept(self, analysis: Analysis) -> Analysis | None:
        """The kept analysis for re-queries (its bytes leave the budget: the cache counts them now), or
        None when it did not fit. Called once, when the synthesis has ended or failed."""
        held = self.held
        self.drop()
        return None if held is None else Analysis(analysis.wave, analysis.sample_rate, held)


class ClipSepModel:
    def __init__(self, checkpoint: str, device: str = "auto", limits: dict | None = None,
                 temp_dir: str | None = None):
        from clipsep_ray.separate import Separator

        self.limits = Limits.from_args(limits or {})
        self.sep = Separator.from_checkpoint(checkpoint, device=replica_device(device, _reserved_gpus()))
        check_servable(self.sep, checkpoint)
        self.checkpoint = checkpoint
        self.cache = ByteLRU(int(self.limits.cache_mb * 2**20))
        self.keep_budget = KeepBudget(self.cache.max_bytes)  # analyses being kept by requests in flight
        self.area = TempArea(temp_dir, int(self.limits.temp_mb * 2**20))  # separate-uri's local copies of outputs
        self.features_batch.set_max_batch_size(self.limits.max_batch_size)
        self.features_batch.set_batch_wait_timeout_s(self.limits.batch_wait_s)
        self.counters = {"batches": 0, "items": 0, "windows": 0, "max_batch_items": 0, "max_batch_windows": 0}
        self._lock = threading.Lock()  # the query encoder's text cache is not thread-safe
        self._healthy_at: float | None = None  # monotonic time of the last passed probe
        # Two pools: request threads block on their batches' results, so the U-Net must not wait
        # for a thread of the same pool (with asyncio's default pool, 8 concurrent requests on
        # 2 cores deadlocked: 6 threads all waiting for a U-Net call that had no thread left).
        self._unet_pool = ThreadPoolExecutor(1, thread_name_prefix="unet")
        self._request_pool = ThreadPoolExecutor(max(8, 2 * self.limits.max_batch_size), thread_name_prefix="request")
        try:
            context = serve.get_replica_context()
            self.tag, self.actor = context.replica_tag, context.replica_id.to_full_id_str()
        except Exception:  # outside a replica (a direct test of the class)
            self.tag, self.actor = uuid.uuid4().hex[:8], None
        self.check_health()

    def __del__(self):
        area = getattr(self, "area", None)
        if area is not None:
            area.close()

    # -- batching --------------------------------------------------------------------------
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def features_batch(self, groups: list[torch.Tensor]) -> list[torch.Tensor]:
        """log |X| groups (B_i, 1, W, N) from any requests -> their features, in one U-Net call."""
        from clipsep_ray.separate import window_features

        sizes = [g.shape[0] for g in groups]
        feats = await asyncio.get_running_loop().run_in_executor(
            self._unet_pool, window_features, self.sep.model, torch.cat(groups), self.sep.cfg.inference.precision,
            self.sep.device)
        c = self.counters
        c["batches"] += 1
        c["items"] += len(groups)
        c["windows"] += sum(sizes)
        c["max_batch_items"] = max(c["max_batch_items"], len(groups))
        c["max_batch_windows"] = max(c["max_batch_windows"], sum(sizes))
        return [f.clone() for f in feats.split(sizes)]  # a view would keep the whole batch alive

    def _batched_hook(self, loop: asyncio.AbstractEventLoop, stop: threading.Event | None = None):
        """A features function for a worker thread: sends each group of windows to the batch, or,
        once ``stop`` is set (the client went away), ends the work with ``Stopped``."""
        from clipsep_ray.separate import Stopped

        def features(log_mag: torch.Tensor) -> torch.Tensor:
            if stop is not None and stop.is_set():
                raise Stopped("the request was cancelled")
            return asyncio.run_coroutine_threadsafe(self.features_batch(log_mag), loop).result()
        return features

    @staticmethod
    async def _until_cancelled(work) -> dict:
        """Await ``work(stop)``. When the client goes away Serve cancels the handler, but a worker
        thread cannot be cancelled: the work is shielded and told to stop at its next group of
        windows (``stop``), and frees what it holds when it has ended, not while it still runs. A
        10-minute upload's work ran on for 318 of its 782 windows after its client left."""
        stop = threading.Event()
        task = asyncio.ensure_future(work(stop))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            stop.set()
            raise

    async def _in_thread(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self._request_pool,
                                                                functools.partial(fn, *args, **kwargs))

    def _projected(self, queries: list[str]):
        """(names, projections): called in a request thread, as a new text query runs the text
        tower (34 ms for ViT-B/32 on one core), which on the event loop would hold up every
        other request's batches meanwhile."""
        with self._lock:
            return self.sep.projections(queries)

    @serve.multiplexed(max_num_models_per_replica=4096)
    async def hold(self, upload_id: str) -> str:
        """Registers ``upload_id`` with Serve's router as held here (the byte LRU bounds memory)."""
        return upload_id

    # -- requests --------------------------------------------------------------------------
    async def separate(self, wave: np.ndarray, sample_rate: int, queries: list[str]) -> dict:
        """Mono input at its own rate -> {"id", "stems": {name: (T,) int16}, "timing"} or {"error"}."""
        return await self._until_cancelled(lambda stop: self._separate_upload(wave, sample_rate, queries, stop))

    async def _separate_upload(self, wave: np.ndarray, sample_rate: int, queries: list[str],
                               stop: threading.Event) -> dict:
        from clipsep_ray.separate import Stopped

        hook = self._batched_hook(asyncio.get_running_loop(), stop)
        wave = np.array(wave, np.float32)  # a copy: the argument is a read-only view of Ray's object store

        def analysed():  # kept only as far as the cache could hold it
            analysis = self.sep.analyse(wave, sample_rate, hook)
            return Analysis(analysis.wave, analysis.sample_rate, Keeper(analysis.batches, self.keep_budget))

        try:
            result, timing, analysis = await self._in_thread(self._separate, queries, analysed)
        except QueryError as exc:
            return {"error": str(exc)}
        except RateError as exc:  # a rate the resampler cannot take (decoded fine: not the decoder's)
            return {"error": str(exc), "status": 400, "code": "unsupported_sample_rate"}
        except Stopped:
            return {"error": "the request was cancelled", "status": 499, "code": "cancelled"}  # nobody reads it
        upload_id = f"{self.tag}.{uuid.uuid4().hex}"
        if analysis is not None and self.cache.put(upload_id, analysis, analysis.nbytes):
            await self.hold(upload_id)
        return {"id": upload_id, "stems": result, "timing": timing}

    async def requery(self, upload_id: str, queries: list[str]) -> dict:
        """New queries on a kept upload: {"stems"} | {"error"} | {"missing": True} | {"elsewhere": True}."""
        analysis = self.cache.get(upload_id)
        if analysis is None:
            return {"elsewhere": True} if upload_id.split(".")[0] != self.tag else {"missing": True}
        try:
            result, timing, _ = await self._in_thread(self._separate, queries, lambda: analysis)
        except QueryError as exc:
            return {"error": str(exc)}
        return {"stems": result, "sample_rate": analysis.sample_rate, "timing": timing}

    def _separate(self, queries: list[str], analysed) -> tuple:
        """(16-bit stems, timing, the kept analysis), all in one request thread: the queries'
        projections, ``analysed()`` (the U-Net for a new upload, the cache for a re-query), the
        synthesis, and the quantisation (0.43 s for 3 stems of 10 minutes at 48 kHz on the 2-core
        box, which on the event loop would hold up every other request's batches)."""
        t0 = time.perf_counter()
        projected = self._projected(queries)
        t1 = time.perf_counter()
        analysis = analysed()
        keeper = analysis.batches if isinstance(analysis.batches, Keeper) else None
        try:
            stems = pcm16_stems(self.sep.synthesise(analysis, None, projected))
        finally:
            kept = keeper.kept(analysis) if keeper is not None else analysis  # a failure gives its bytes back
        return stems, _timing(t0, t1), kept

    async def separate_uri(self, source: str, dest: str, queries: list[str], fmt: str) -> dict:
        """Stream ``source`` through the model to ``dest``: {"outputs": {name: uri}} or {"error"}.

        The outputs' local copies (each is uploaded whole when complete) go to a request folder of
        the replica's bounded temporary area, with their 16-bit size reserved first: the input's
        length, or ``max_seconds`` of it when its header does not say (and decoding stops there)."""
        return await self._until_cancelled(lambda stop: self._separate_uri(source, dest, queries, fmt, stop))

    async def _separate_uri(self, source: str, dest: str, queries: list[str], fmt: str,
                            stop: threading.Event) -> dict:
        from clipsep_ray.audio.io import AudioDecodeError, TooLongError
        from clipsep_ray.separate import Stopped

        folder = self.area.request_dir()
        try:
            projected = await self._in_thread(self._projected, queries)
            reserved, seconds = await self._in_thread(self._output_bytes, source, len(projected[0]) + 1, fmt)
            self.area.reserve(folder, reserved)
            hook = self._batched_hook(asyncio.get_running_loop())
            # The projections made under the lock: separate_file must not run the encoder again unlocked.
            files = await self._in_thread(self.sep.separate_file, source, dest, projected[0], fmt, features=hook,
                                          projected=projected, max_seconds=seconds, temp_dir=folder, stop=stop)
        except QueryError as exc:
            return {"error": str(exc)}
        except (AudioDecodeError, FileNotFoundError) as exc:
            return {"error": str(exc), "status": 400, "code": "bad_input"}
        except RateError as exc:
            return {"error": str(exc), "status": 400, "code": "unsupported_sample_rate"}
        except ImportError as exc:  # gs://, az://: a filesystem library this server does not have
            return {"error": f"this server cannot reach {source.split('://')[0]}:// or "
                             f"{dest.split('://')[0]}:// storage: {exc}", "status": 422, "code": "bad_uri"}
        except TooLongError as exc:
            if exc.max_seconds < self.limits.max_seconds:  # decoding passed what its header declared
                return {"error": f"{source} holds more audio than its header declares: re-encode it", "status": 400,
                        "code": "bad_input"}
            return {"error": str(exc), "status": 413, "code": "audio_too_long"}
        except PermissionError as exc:  # the store refused this service's credentials (S3 AccessDenied)
            return {"error": f"object storage refused access: {exc}", "status": 403, "code": "storage_access_denied"}
        except Stopped:
            return {"error": "the request was cancelled", "status": 499, "code": "cancelled"}  # nobody reads it
        except ApiError as exc:  # the temporary area is full
            return {"error": exc.message, "status": exc.status, "code": exc.code, "headers": exc.headers}
        finally:
            self.area.remove(folder)
        return {"outputs": files}

    def _output_bytes(self, source: str, outputs: int, fmt: str) -> tuple[int, float]:
        """(bytes of ``outputs`` mono ``fmt`` files as long as ``source``, in its precision (16-bit,
        24-bit or float: :func:`~clipsep_ray.audio.io.output_subtype`), the seconds decoding may
        reach): its header's length where decoding stops there (libsndfile); a container's declared
        length plus 5% and 1 s, as an MP4 may declare 1 s and hold 10 minutes, which the writers
        would put in an area reserved for 1 s; ``max_seconds`` when it declares none."""
        from clipsep_ray.audio.io import AudioReader, TooLongError, output_subtype, sample_bytes

        with AudioReader(source) as reader:
            width = sample_bytes(output_subtype(reader.depth, f"x.{fmt}"))
            sr, n = reader.sample_rate, reader.num_frames
            cap = int(self.limits.max_seconds * sr)
            if n is not None and n > cap:
                raise TooLongError(source, self.limits.max_seconds)
            frames = cap if n is None else n if reader.exact_length else min(cap, int(1.05 * n) + sr)
            declared = n is not None and not reader.exact_length and frames < cap  # only then can decoding pass it
            return outputs * (width * frames + 4096), (frames / sr if declared else self.limits.max_seconds)

    # -- health and info -------------------------------------------------------------------
    def check_health(self) -> None:
        """Raises unless the model separates a short noise signal into finite stems."""
        try:
            noise = np.random.default_rng(0).standard_normal(self.sep.cfg.audio.clip_samples).astype(np.float32) * 0.1
            stems = self.sep.separate(noise, self.sep.cfg.audio.sample_rate, None,
                                      projected=self._projected([PROBE_QUERY]))
            if not all(np.isfinite(s).all() for s in stems.values()):
                raise RuntimeError("the model gives non-finite output")
        except BaseException:
            self._healthy_at = None  # the next /healthz probes again
            raise
        self._healthy_at = time.monotonic()

    async def healthy(self) -> bool:
        """``GET /healthz``: the probe's answer when it passed within :data:`HEALTH_FRESH_S` (Serve runs
        it every 10 s), else the probe now. A flood of /healthz, which needs no token, then costs no
        U-Net passes that requests would wait behind."""
        if self._healthy_at is None or time.monotonic() - self._healthy_at > HEALTH_FRESH_S:
            await self._in_thread(self.check_health)
        return True

    def info(self) -> dict:
        cfg = self.sep.cfg
        return {"replica": self.tag, "actor": self.actor, "checkpoint": self.checkpoint,
                "checkpoint_sha256": self.sep.checkpoint_sha256, "device": str(self.sep.device),
                "model": {"arch": cfg.model.arch,
                          "method": self.sep.model.method_name(cfg.model, cfg.train.mode),
                          "text_queries": bool(self.sep.model.text_queries), "clip_model": cfg.query.clip_model,
                          "unet_depth": cfg.model.unet_depth, "unet_width": cfg.model.unet_width,
                          "num_masks": cfg.model.num_masks},
                "sample_rate": cfg.audio.sample_rate, "window_samples": cfg.audio.clip_samples,
                "batch_windows": cfg.inference.batch_windows, "precision": cfg.inference.precision,
                "batching": {**self.counters, "max_batch_size": self.limits.max_batch_size,
                             "batch_wait_s": self.limits.batch_wait_s},
                "cache": self.cache.stats(), "temp": {"used_bytes": self.area.used, "max_bytes": self.area.max_bytes}}
