"""The one inference function: ``separate`` and its streaming form, and the ``Separator`` wrapper.

Every consumer (validation, evaluation, the CLI, the batch job, Serve) goes through
:func:`separate_stream`. A signal at the model rate is cut into overlapping windows of
``audio.clip_samples`` samples, windows are batched through the U-Net ONCE whatever
the number of queries (late fusion: the U-Net features do not depend on the query),
each query then costs one inner product, the inverse warp and an iSTFT, and the
windows are cross-faded back together. Memory is bounded by one batch of windows.

The query-independent half (:func:`analyse_stream`: spectra and U-Net features) and the
per-query half (:func:`synthesise_stream`) are separate steps, so Serve keeps the first for
an upload and answers a re-query with the second alone (``Separator.analyse`` / ``synthesise``).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from clipsep_ray.audio.chunking import OverlapAdd, crossfade, num_windows
from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.config import Config, InferenceConfig
from clipsep_ray.models.base import SeparationModel
from clipsep_ray.models.query import QueryError, QueryEncoder, check_queries
from clipsep_ray.runtime import autocast, autocast_dtype, resolve_device
from clipsep_ray.storage import slug

RESIDUAL = "residual"
LOSSLESS_FORMATS = ("wav", "flac")

#: log |X| of a batch of windows (B, 1, W, N) -> U-Net features (B, k, W, N). The default is
#: :func:`window_features`; Serve passes one that batches windows of concurrent requests and
#: caches them for re-queries (late fusion: the features do not depend on the query).
FeaturesFn = Callable[[Tensor], Tensor]


@torch.no_grad()
def window_features(model: SeparationModel, log_mag: Tensor, precision: str, device: torch.device | str) -> Tensor:
    """The U-Net pass of :func:`separate_stream` (in the precision ``InferenceConfig`` names)."""
    device = torch.device(device)
    with autocast(device, autocast_dtype(precision, device)):
        return model.features(log_mag.to(device))


class Stopped(Exception):
    """A separation ended early because its caller set its ``stop`` event."""


def tensor_bytes(*tensors: Tensor | None) -> int:
    """Bytes held by the given tensors (None counts as nothing)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass
class WindowBatch:
    """The query-independent part of one batch of windows: the mixture spectra (B, F, N) and
    the U-Net features (B, k, W, N). The last item of a stream carries ``total``, the stream's
    length in samples, and may hold no windows (``spec is None``)."""

    spec: Tensor | None
    features: Tensor | None
    total: int | None = None

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.spec, self.features)


@torch.no_grad()
def analyse_stream(model: SeparationModel, frontend: SpectralFrontEnd, blocks: Iterable[Tensor],
                   cfg: InferenceConfig | None = None, device: torch.device | str = "cpu",
                   features: FeaturesFn | None = None) -> Iterator[WindowBatch]:
    """Mono blocks at the model rate -> their overlapping windows' spectra and U-Net features,
    ``cfg.batch_windows`` windows per item, computed as the blocks arrive (see :func:`separate_stream`)."""
    cfg = cfg or InferenceConfig()
    device = torch.device(device)
    window = frontend.clip_samples
    hop = window - int(round(cfg.overlap * window))
    extract = features or (lambda log_mag: window_features(model, log_mag, cfg.precision, device))

    def batch(windows: list[Tensor], total: int | None = None) -> WindowBatch:
        spec, _, log_mag = frontend.analyse(torch.stack(windows).to(device))
        return WindowBatch(spec, extract(log_mag).to(device), total)

    buf = torch.zeros(0)
    total = taken = 0
    pending: list[Tensor] = []
    for block in blocks:
        block = torch.as_tensor(block, dtype=torch.float32).reshape(-1)
        buf = torch.cat([buf, block])
        total += block.numel()
        while buf.numel() >= window:
            pending.append(buf[:window].clone())
            buf, taken = buf[hop:], taken + 1
            if len(pending) == cfg.batch_windows:
                yield batch(pending)
                pending = []
    if total == 0:
        raise ValueError("cannot separate an empty signal")
    while taken < num_windows(total, window, hop):
        pending.append(torch.nn.functional.pad(buf[:window], (0, window - min(window, buf.numel()))))
        buf, taken = buf[hop:], taken + 1
    yield batch(pending, total) if pending else WindowBatch(None, None, total)


@torch.no_grad()
def synthesise_stream(model: SeparationModel, frontend: SpectralFrontEnd, batches: Iterable[WindowBatch],
                      projections: Tensor | None, cfg: InferenceConfig | None = None,
                      device: torch.device | str = "cpu") -> Iterator[Tensor]:
    """:func:`analyse_stream`'s items + (Q, k) projections -> (Q, M_i) estimate chunks: per query
    an inner product with the features, the mask, the inverse warp and an iSTFT, cross-faded."""
    cfg = cfg or InferenceConfig()
    device = torch.device(device)
    window = frontend.clip_samples
    overlap = int(round(cfg.overlap * window))
    channels = model.num_outputs(projections)
    ola = OverlapAdd(window, window - overlap, channels, crossfade(window, overlap))
    proj = projections.to(device) if projections is not None else None

    def run(b: WindowBatch) -> Tensor:
        if b.spec is None:
            return torch.zeros(channels, 0)
        logits = model.mask_logits(b.features, proj)
        masks = torch.sigmoid(logits) if cfg.soft_masks else (logits > 0).float()
        return ola.add(frontend.reconstruct(masks, b.spec, window).cpu())

    for b in batches:
        if b.total is None:
            yield run(b)
            continue
        # The last windows are zero-padded past the end: cut what they add beyond ``total``.
        before = ola.emitted
        yield torch.cat([run(b), ola.finish(b.total)], dim=1)[:, : b.total - before]


def separate_stream(model: SeparationModel, frontend: SpectralFrontEnd, blocks: Iterable[Tensor],
                    projections: Tensor | None, cfg: InferenceConfig | None = None,
                    device: torch.device | str = "cpu", features: FeaturesFn | None = None) -> Iterator[Tensor]:
    """Separate a stream of mono blocks at the model rate.

    blocks: iterable of (T_i,) float tensors (any sizes); projections: (Q, k) query
    projections (``model.project(embeddings)``), None for PIT. Yields (Q, M_i) estimate
    chunks, in order, that together have exactly sum(T_i) samples. ``features`` replaces
    the U-Net pass (see :data:`FeaturesFn`); it is called once per batch of windows, in order.
    The two halves run in lockstep, so memory holds one batch of windows.
    """
    batches = analyse_stream(model, frontend, blocks, cfg, device, features)
    return synthesise_stream(model, frontend, batches, projections, cfg, device)


def separate(model: SeparationModel, frontend: SpectralFrontEnd, waveform: Tensor, projections: Tensor | None,
             cfg: InferenceConfig | None = None, device: torch.device | str = "cpu",
             features: FeaturesFn | None = None) -> Tensor:
    """(T,) mono at the model rate + (Q, k) projections -> (Q, T) estimates (see :func:`separate_stream`)."""
    return torch.cat(list(separate_stream(model, frontend, [waveform], projections, cfg, device, features)), dim=1)


def output_files(out_dir: str, names: Sequence[str], ext: str) -> dict[str, str]:
    """name -> output path: ``<query slug>.<ext>`` per name and ``residual.<ext>``; queries whose
    file names would clash are refused."""
    files = {n: f"{out_dir.rstrip('/')}/{slug(n)}.{ext}" for n in names}
    files[RESIDUAL] = f"{out_dir.rstrip('/')}/{RESIDUAL}.{ext}"
    if len(set(files.values())) != len(files):
        raise QueryError(f"queries {list(names)} give clashing file names")
    return files


class StemAssembler:
    """Writes the stems (resampled back to the input's rate) and the residual, the input minus
    the stems, in lockstep with the input, block by block: memory holds only what one side has
    and the other has not yet delivered.

    ``writers``: name -> writer (``.write((T,) float32)``) for every name in ``names`` and for
    ``"residual"``.
    """

    def __init__(self, names: Sequence[str], writers: Mapping):
        self.names, self.writers = list(names), writers
        self.taken = self.written = 0
        self._input: list[np.ndarray] = []  # input samples waiting for their stems
        self._ready = [np.zeros(0, np.float32) for _ in self.names]

    def add_input(self, block: np.ndarray) -> None:
        self._input.append(np.asarray(block, np.float32))
        self.taken += len(block)

    def add_stems(self, parts: np.ndarray) -> None:
        """(Q, n) stem samples at the input's rate (a 1-D array for an empty flush)."""
        parts = list(parts) if np.ndim(parts) == 2 else [parts] * len(self.names)
        for i, p in enumerate(parts):
            self._ready[i] = np.concatenate([self._ready[i], p])
        n = min(min(len(r) for r in self._ready), self.taken - self.written)
        if n == 0:
            return
        mix = np.concatenate(self._input) if self._input else np.zeros(0, np.float32)
        self._input = [mix[n:]]
        total = np.zeros(n, np.float32)
        for i, name in enumerate(self.names):
            self.writers[name].write(self._ready[i][:n])
            total += self._ready[i][:n]
            self._ready[i] = self._ready[i][n:]
        self.writers[RESIDUAL].write(mix[:n] - total)
        self.written += n

    def finish(self, source: str) -> None:
        if self.written != self.taken:
            raise RuntimeError(f"{source}: wrote {self.written} of {self.taken} samples")


@dataclass
class Separation(Mapping):
    """query -> (T,) float32 stem at the input's rate and length, plus ``"residual"``."""

    stems: dict[str, np.ndarray]
    sample_rate: int

    def __getitem__(self, key: str) -> np.ndarray:
        return self.stems[key]

    def __iter__(self):
        return iter(self.stems)

    def __len__(self) -> int:
        return len(self.stems)


@dataclass
class Analysis:
    """What every query of one input shares: the input (mono, its own rate) and its windows'
    spectra and U-Net features (:func:`analyse_stream`'s items)."""

    wave: Tensor
    sample_rate: int
    batches: Iterable[WindowBatch]

    def kept(self) -> Analysis:
        """The same analysis with its batches computed and held, for any number of queries."""
        return Analysis(self.wave, self.sample_rate, list(self.batches))

    @property
    def nbytes(self) -> int:
        """Bytes held by a kept analysis (the input and every batch)."""
        if not isinstance(self.batches, list):  # counting would run (and use up) a lazy analysis
            raise ValueError("only a kept analysis (Analysis.kept()) has a size")
        return tensor_bytes(self.wave) + sum(b.nbytes for b in self.batches)


class Separator:
    """A loaded model, its front end and query encoder, ready to separate audio at any rate."""

    def __init__(self, model: SeparationModel, cfg: Config, query_encoder: QueryEncoder | None = None,
                 device: str = "auto"):
        self.cfg = cfg
        self.device = resolve_device(device if device != "auto" else cfg.inference.device)
        self.model = model.eval().to(self.device)
        if cfg.model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.frontend = SpectralFrontEnd.from_config(cfg.audio).to(self.device)
        self._encoder = query_encoder
        self.checkpoint_sha256: str | None = None  # the file's identity, when loaded from one

    @classmethod
    def from_checkpoint(cls, uri: str, device: str = "auto", clip_pretrained: str | None = None,
                        query_encoder: QueryEncoder | None = None, sha256: str | None = None,
                        **inference) -> "Separator":
        """Load a checkpoint; ``clip_pretrained`` overrides where the CLIP weights are read from;
        ``sha256`` is the identity the file must have (``models.checkpoint.read_checkpoint``), and
        the one it had is kept as ``checkpoint_sha256``; ``inference`` overrides InferenceConfig
        fields (e.g. precision="fp32")."""
        from clipsep_ray.models.checkpoint import load_checkpoint

        model, cfg, payload = load_checkpoint(uri, sha256=sha256)
        if clip_pretrained is not None:
            cfg.query.clip_pretrained = clip_pretrained
        if inference:
            cfg = cfg.override({f"inference.{k}": v for k, v in inference.items()})
            cfg.check_section("inference")  # an overlap of 1 is a window step of 0: a loop without end
        sep = cls(model, cfg, query_encoder, device)
        sep.checkpoint_sha256 = payload["sha256"]
        return sep

    @property
    def query_encoder(self) -> QueryEncoder:
        if self._encoder is None:
            self._encoder = QueryEncoder.from_config(self.cfg.query, device=str(self.device))
        return self._encoder

    def projections(self, queries) -> tuple[list[str], Tensor | None]:
        """Queries -> (names, (Q, k) projections). Text, (Q, D) embeddings, or images (name: image_i)."""
        fixed = self.model.output_names()
        if fixed is not None:
            return fixed, None
        if isinstance(queries, (str, bytes)) or not isinstance(queries, (Sequence, Tensor, np.ndarray)):
            queries = [queries]
        if isinstance(queries, (Tensor, np.ndarray)):
            emb = torch.as_tensor(queries, dtype=torch.float32).reshape(-1, queries.shape[-1])
            names = [f"query_{i + 1}" for i in range(emb.shape[0])]
        elif all(isinstance(q, str) for q in queries):
            names = check_queries(queries)
            if not self.model.text_queries:
                kinds = ", ".join(self.model.query_columns)
                raise QueryError(f"a {self.model.method_name(self.cfg.model, self.cfg.train.mode)} model takes "
                                 f"{kinds} queries, not text")
            emb = self.query_encoder.encode_text(names)
        else:
            emb = self.query_encoder.encode_images(list(queries))
            names = [f"image_{i + 1}" for i in range(emb.shape[0])]
        if len(set(names)) != len(names):
            raise QueryError(f"repeated query in {names}")
        if RESIDUAL in names:
            raise QueryError(f"'{RESIDUAL}' names the rest of the mixture in the output: ask for the sound itself")
        with torch.no_grad():
            return names, self.model.project(emb.to(self.device)).float()

    def analyse(self, waveform, sample_rate: int, features: FeaturesFn | None = None) -> Analysis:
        """Mono or (C, T) audio at any rate -> its :class:`Analysis` (lazy: the U-Net runs as
        the batches are read; ``.kept()`` holds them for more than one :meth:`synthesise`).

        Multichannel input is averaged to mono (the model is mono). ``features`` replaces the
        U-Net pass (:data:`FeaturesFn`).
        """
        from clipsep_ray.audio.io import pcm_to_float, resample

        arr = waveform.detach().cpu().numpy() if isinstance(waveform, Tensor) else np.asarray(waveform)
        wave = torch.as_tensor(np.asarray(pcm_to_float(arr), dtype=np.float32))  # PCM scaled as a file reads it
        if wave.dim() == 2 and wave.shape[0] > wave.shape[1]:  # what sf.read returns; averaging it gave 2 samples
            raise ValueError(f"waveform of shape {tuple(wave.shape)} looks like (T, C): pass (C, T), e.g. wave.T")
        if wave.dim() == 2:
            wave = wave.mean(dim=0)
        if wave.dim() != 1 or wave.numel() == 0:
            raise ValueError(f"waveform must be a non-empty (T,) or (C, T) array, got shape {tuple(wave.shape)}")
        if not torch.isfinite(wave).all():
            raise ValueError("waveform contains NaN or infinite samples")
        x = resample(wave, sample_rate, self.cfg.audio.sample_rate)
        batches = analyse_stream(self.model, self.frontend, [x], self.cfg.inference, self.device, features)
        return Analysis(wave, int(sample_rate), batches)

    def synthesise(self, analysis: Analysis, queries,
                   projected: tuple[list[str], Tensor | None] | None = None) -> Separation:
        """An :class:`Analysis` + queries -> {query: stem, "residual": rest}, at the input's rate and
        length. ``projected`` gives ``projections(queries)`` already made."""
        from clipsep_ray.audio.io import resample

        names, proj = projected or self.projections(queries)
        wave = analysis.wave
        est = torch.cat(list(synthesise_stream(self.model, self.frontend, analysis.batches, proj,
                                               self.cfg.inference, self.device)), dim=1)
        est = resample(est, self.cfg.audio.sample_rate, analysis.sample_rate)[:, : wave.numel()]
        stems = {n: est[i].numpy() for i, n in enumerate(names)}
        stems[RESIDUAL] = (wave - est.sum(dim=0)).numpy()
        return Separation(stems, analysis.sample_rate)

    def separate(self, waveform, sample_rate: int, queries, features: FeaturesFn | None = None,
                 projected: tuple[list[str], Tensor | None] | None = None) -> Separation:
        """Mono or (C, T) audio at any rate -> {query: stem, "residual": rest}, same rate and length:
        :meth:`analyse` then :meth:`synthesise`, in lockstep (one batch of windows in memory)."""
        names_proj = projected or self.projections(queries)  # a bad query fails before the U-Net runs
        return self.synthesise(self.analyse(waveform, sample_rate, features), queries, names_proj)

    def separate_file(self, source: str, out_dir: str, queries, format: str | None = None,
                      block_seconds: float = 60.0, info: dict | None = None,
                      features: FeaturesFn | None = None,
                      projected: tuple[list[str], Tensor | None] | None = None,
                      max_seconds: float | None = None, temp_dir: str | None = None,
                      stop: threading.Event | None = None) -> dict[str, str]:
        """Stream a file of any length through the model: ``out_dir/<query slug>.<ext>`` + ``residual.<ext>``.

        Decoding, resampling, separation and encoding all run block by block, so memory
        does not grow with the file's length. Returns {name: written path}. Outputs are
        written under temporary names and renamed only when the whole file succeeded.
        ``info``, when given, receives the input's ``sample_rate``, ``channels`` and ``samples``;
        ``features`` replaces the U-Net pass (:data:`FeaturesFn`); ``projected`` gives
        ``projections(queries)`` already made (then no query encoder is loaded); ``max_seconds``
        refuses a longer source (``TooLongError``, also while decoding one whose header did not
        say); ``temp_dir`` holds the local copies of outputs bound for object storage; ``stop``, once
        set (from another thread), ends the work at the next block with ``Stopped``, nothing written.
        """
        from clipsep_ray.audio.io import (AudioReader, StreamingAudioWriter, StreamingResampler, TooLongError,
                                          close_writers, extension, output_subtype)

        names, proj = projected or self.projections(queries)
        model_sr = self.cfg.audio.sample_rate
        # Lossless unless asked otherwise: the stems and the residual then add up to the input
        # (an Ogg Vorbis round trip was 4.5% off on a 32 kHz stereo file).
        ext = format or extension(source).lstrip(".")
        ext = ext if ext in LOSSLESS_FORMATS or (format and ext == "ogg") else "flac"
        files = output_files(out_dir, names, ext)
        with AudioReader(source) as reader:
            sr = reader.sample_rate
            down = StreamingResampler(sr, model_sr)
            up = StreamingResampler(model_sr, sr)  # every stem in one call
            writers: dict[str, StreamingAudioWriter] = {}

            limit = None if max_seconds is None else int(max_seconds * sr)
            if limit is not None and reader.num_frames is not None and reader.num_frames > limit:
                raise TooLongError(source, max_seconds)

            def model_blocks():
                for block in reader.blocks(int(block_seconds * sr)):
                    stems.add_input(block)
                    if limit is not None and stems.taken > limit:
                        raise TooLongError(source, max_seconds)
                    if stop is not None and stop.is_set():
                        raise Stopped(f"separation of {source} stopped")
                    yield torch.from_numpy(down.push(block))
                yield torch.from_numpy(down.flush())

            try:
                for n, p in files.items():
                    writers[n] = StreamingAudioWriter(p, sr, subtype=output_subtype(reader.depth, p), temp_dir=temp_dir)
                stems = StemAssembler(names, writers)
                for chunk in separate_stream(self.model, self.frontend, model_blocks(), proj,
                                             self.cfg.inference, self.device, features):
                    stems.add_stems(up.push(chunk.numpy()))
                stems.add_stems(up.flush())
                stems.finish(source)
                close_writers(writers.values(), commit=True)
            except BaseException:
                close_writers(writers.values(), commit=False, folder=out_dir)  # a failed input leaves no folder
                raise
            if info is not None:
                info.update(sample_rate=sr, channels=reader.channels, samples=stems.taken)
        return files
