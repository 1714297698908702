"""The stages of the archive pipeline, one input file per row.

With model actors on GPUs the work is split in three (``staged``):

decode (CPU task): the input, block by block, resampled to the model rate -> a temporary mono
  float WAV under ``OUTPUT_URI/_tmp/<key>/``.
separate (actor pool of model replicas): that signal through the one inference function
  (``separate_stream``: overlapping windows, batched U-Net, every query from one pass) -> one
  temporary float WAV per query, at the model rate.
encode (CPU task): the input decoded again at its own rate, the stems resampled back to it,
  the residual (input minus the stems), each written under its final name by write-then-rename
  (a single PUT on object stores), via ``separate.StemAssembler``.

Every stage streams blocks, so a file of hours never sits whole in memory, and the stages of
different files overlap. On CPU-only pools (``fused``) one actor does the three in one pass
(:class:`SeparateFile`), streaming the same way. A row that fails keeps ``status="failed"`` and the reason (the decoder's
message for a bad file); later stages pass it through untouched. No stage raises on bad input.
"""
from __future__ import annotations

import contextlib
import json
import time
from typing import Callable

import numpy as np

from clipsep_ray import storage
from clipsep_ray.batch.inputs import TMP  # the temporary files' folder under OUTPUT_URI (no input's)

# What a bad input can raise while it is decoded, separated or encoded: recorded in its row (the
# exception's type and message), never fatal to the job. Any Exception: a decoder's odd failure on
# one file of thousands (an IndexError, a KeyError) must not end the job and lose the rows since
# its last manifest write; a fault of our own fails every row, and the job says so (exit 1).
INPUT_ERRORS = (Exception,)


def rows_of(batch: dict) -> list[dict]:
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: (batch[k][i].item() if hasattr(batch[k][i], "item") else batch[k][i]) for k in keys}
            for i in range(n)]


def batch_of(rows: list[dict]) -> dict:
    return {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}


STAGES = ("decode", "separate", "encode")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def per_row(fn: Callable[[dict], dict], stage: str) -> Callable[[dict], dict]:
    """Apply a row function to every ok row of a batch, timing it and recording the process's
    peak memory as ``<stage>_rss_mb``; failed rows pass through."""
    def run(batch: dict) -> dict:
        out = []
        for row in rows_of(batch):
            if row["status"] == "ok":
                t0 = time.perf_counter()
                try:
                    row = fn(row)
                except INPUT_ERRORS as exc:
                    row = {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                row["seconds"] = float(row["seconds"]) + time.perf_counter() - t0
                row[f"{stage}_rss_mb"] = peak_rss_mb()
            out.append(row)
        return batch_of(out)

    return run


def tmp_uri(output_uri: str, key: str, name: str) -> str:
    return storage.join_uri(output_uri, TMP, key, name)


def dropping_temporaries(fn: Callable[[dict], dict], output_uri: str, slots=None) -> Callable[[dict], dict]:
    """``fn`` (the last stage), then each row's ``_tmp/<key>/`` removed, done or failed, and its
    :class:`TempSlots` slot given back: the decoded input and the stems at the model rate would
    otherwise pile up until the job ends (a float copy of every input of the archive)."""
    def run(batch: dict) -> dict:
        out = fn(batch)
        for row in rows_of(out):
            fs, path = storage.url_to_fs(storage.join_uri(output_uri, TMP, row["key"]))
            try:
                if fs.exists(path):
                    fs.rm(path, recursive=True)
            except OSError as exc:  # not the input's fault: the end of the job removes _tmp/ whole
                print(f"[archive] could not remove {path} yet: {exc}", flush=True)
            if slots is not None:
                slots.release.remote(row["key"])
        return out

    return run


class TempSlots:
    """How many inputs of the staged pipeline may have their float copies in ``_tmp/`` at once: a
    decode task takes a slot before writing its copy, and the last stage gives it back once the
    copies are removed. Decoding ran ahead of a slower model without limit (rows are a few hundred
    bytes, so Ray Data's object-store backpressure never engaged): 31 inputs separated against 98
    decoded, and on a large archive the copies fill the disk. A decode task waiting for a slot
    blocks in ``ray.get``, which hands its CPU back to Ray meanwhile. Slots are keyed by the input,
    so a retried task takes none twice. Started as a Ray actor (``ray.remote(TempSlots)``)."""

    def __init__(self, slots: int):
        import asyncio

        self.slots, self.held, self.peak, self.changed = slots, set(), 0, asyncio.Event()

    async def acquire(self, key: str) -> None:
        while key not in self.held and len(self.held) >= self.slots:
            self.changed.clear()
            await self.changed.wait()
        self.held.add(key)
        self.peak = max(self.peak, len(self.held))

    async def release(self, key: str) -> None:
        self.held.discard(key)
        self.changed.set()

    async def stats(self) -> dict:
        return {"slots": self.slots, "held": len(self.held), "peak": self.peak}


def decode(row: dict, *, model_sr: int, output_uri: str, block_seconds: float, slots=None) -> dict:
    from clipsep_ray.audio.io import AudioReader, StreamingAudioWriter, StreamingResampler

    if slots is not None:
        import ray

        ray.get(slots.acquire.remote(row["key"]))
    dest = tmp_uri(output_uri, row["key"], "input.wav")
    with AudioReader(row["input"]) as reader:
        down = StreamingResampler(reader.sample_rate, model_sr)
        n = 0
        with StreamingAudioWriter(dest, model_sr, format="rf64", subtype="FLOAT") as w:  # WAV stops at 4 GiB
            for block in reader.blocks(int(block_seconds * reader.sample_rate)):
                n += len(block)
                w.write(down.push(block))
            w.write(down.flush())
    return {**row, "sample_rate": int(reader.sample_rate), "channels": int(reader.channels),
            "duration_s": n / reader.sample_rate}


class _ModelActor:
    """A model replica, loaded once per actor, that runs :meth:`separate` on every ok row.

    ``names`` and ``projections`` are the driver's ``Separator.projections(queries)`` ((Q, k)
    float32, None for models with fixed outputs): replicas never load the query encoder, which
    cost each actor 2.1 s of start-up on 2 cores (open_clip's import and text tower).
    ``sha256`` is the checkpoint file the job recorded: an actor started (or restarted) after
    another file was written to the same URI refuses to start instead of separating with it.
    """

    def __init__(self, checkpoint: str, sha256: str | None, names: list[str], projections: np.ndarray | None,
                 output_uri: str, device: str, block_seconds: float, fmt: str = "flac"):
        import torch

        from clipsep_ray.separate import Separator

        self.sep = Separator.from_checkpoint(checkpoint, device=device, sha256=sha256)
        self.names = list(names)
        self.proj = None if projections is None else torch.tensor(projections).to(self.sep.device)
        self.output_uri, self.block_seconds, self.fmt = output_uri, block_seconds, fmt
        self._run = per_row(self.separate, "separate")

    def __call__(self, batch: dict) -> dict:
        return self._run(batch)

    def separate(self, row: dict) -> dict:
        raise NotImplementedError


class Separate(_ModelActor):
    """Actor: separates one decoded input (the decode stage's temporary file) per row."""

    def separate(self, row: dict) -> dict:
        import torch

        from clipsep_ray.audio.io import AudioReader, StreamingAudioWriter
        from clipsep_ray.separate import separate_stream

        sr = self.sep.cfg.audio.sample_rate
        source = tmp_uri(self.output_uri, row["key"], "input.wav")
        with contextlib.ExitStack() as stack:
            reader = stack.enter_context(AudioReader(source))
            writers = [stack.enter_context(StreamingAudioWriter(tmp_uri(self.output_uri, row["key"], f"stem{i}.wav"),
                                                                sr, format="rf64", subtype="FLOAT"))
                       for i in range(len(self.names))]
            blocks = (torch.from_numpy(b) for b in reader.blocks(int(self.block_seconds * sr)))
            for chunk in separate_stream(self.sep.model, self.sep.frontend, blocks, self.proj,
                                         self.sep.cfg.inference, self.sep.device):
                for w, stem in zip(writers, chunk.numpy()):
                    w.write(stem)
        return row


class SeparateFile(_ModelActor):
    """Actor for CPU-only pools: decode, separate and encode one input in this process, one
    pass (``Separator.separate_file``), with no temporary files. On CPUs the split stages only
    compete for the same cores and decode every input twice (benchmarks/RESULTS.md)."""

    def separate(self, row: dict) -> dict:
        info: dict = {}
        files = self.sep.separate_file(row["input"], storage.join_uri(self.output_uri, row["out_dir"]), self.names,
                                       format=self.fmt, block_seconds=self.block_seconds, info=info,
                                       projected=(self.names, self.proj))
        return {**row, "sample_rate": int(info["sample_rate"]), "channels": int(info["channels"]),
                "duration_s": info["samples"] / info["sample_rate"], "outputs": json.dumps(list(files.values()))}


def encode(row: dict, *, names: list[str], model_sr: int, output_uri: str, fmt: str, block_seconds: float) -> dict:
    from clipsep_ray.audio.io import (AudioReader, StreamingAudioWriter, StreamingResampler, close_writers,
                                      output_subtype)
    from clipsep_ray.separate import StemAssembler, output_files

    files = output_files(storage.join_uri(output_uri, row["out_dir"]), names, fmt)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(AudioReader(row["input"]))
        sr = source.sample_rate
        stems = [stack.enter_context(AudioReader(tmp_uri(output_uri, row["key"], f"stem{i}.wav"))).blocks(
            int(block_seconds * model_sr)) for i in range(len(names))]
        up = StreamingResampler(model_sr, sr)
        writers: dict = {}
        try:
            for n, uri in files.items():  # inside the try: a writer that fails to open drops the others' temps
                writers[n] = StreamingAudioWriter(uri, sr, subtype=output_subtype(source.depth, uri))
            out = StemAssembler(names, writers)
            for block in source.blocks(int(block_seconds * sr)):
                out.add_input(block)
                parts = [next(s, None) for s in stems]
                if parts[0] is not None:
                    out.add_stems(up.push(np.stack(parts)))
            for rest in zip(*stems):
                out.add_stems(up.push(np.stack(rest)))
            out.add_stems(up.flush())
            out.finish(row["input"])
            close_writers(writers.values(), commit=True)  # every output complete: publish them together
        except BaseException:
            close_writers(writers.values(), commit=False, folder=storage.join_uri(output_uri, row["out_dir"]))
            raise
    return {**row, "outputs": json.dumps(list(files.values()))}
