"""Archive separation throughput and memory, measured in one run (ratios, not absolute times).

For each preset (a randomly initialised model of that size: speed does not depend on the
weights): an archive of ``--files`` files (mixed rates and channel counts, ``--minutes`` of audio
in all) separated
  * by the plain single-process loop (``Separator.separate_file`` per file, what
    ``clipsep-ray separate FOLDER`` does),
  * by ``separate_archive`` with 1 and with 2 model actors, in each pipeline (fused: each actor
    decodes, separates and encodes; staged: decode and encode in CPU tasks),
against the model's forward-only throughput (``separate`` on the model-rate signal, no decode,
resampling or encoding). Then peak memory per stage for a folder holding one 1-minute file and
one holding a ``--long-minutes`` file. Results: JSON lines appended to ``--out``.

    python benchmarks/bench_archive.py --presets tiny paper --minutes 10 --long-minutes 180

``--rounds N`` runs every variant N times, interleaved (``timing.interleaved``), and reports the
medians (each round's seconds are kept): on 2 cores two runs of one 2-thread variant differed by
up to 25%.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import interleaved  # noqa: E402
from timing import machine as describe_machine  # noqa: E402

RATES = [(44100, 2), (16000, 1), (22050, 1), (48000, 2), (8000, 1), (32000, 1)]


def make_checkpoint(preset: str, folder: str) -> str:
    import torch

    from clipsep_ray.config import load_config
    from clipsep_ray.models.checkpoint import save_checkpoint
    from clipsep_ray.models.registry import build_model

    cfg = load_config(preset, ["query.clip_pretrained="])
    torch.manual_seed(0)
    return save_checkpoint(os.path.join(folder, f"{preset}.pt"), build_model(cfg.model), cfg)


def write_file(path: str, seconds: float, sr: int, channels: int, seed: int) -> None:
    """Tone + noise, written in 60 s blocks (a long file never sits whole in this process either)."""
    from clipsep_ray.audio.io import StreamingAudioWriter

    rng = np.random.default_rng(seed)
    with StreamingAudioWriter(path, sr, channels=channels) as w:
        done = 0
        total = int(seconds * sr)
        while done < total:
            n = min(60 * sr, total - done)
            t = (done + np.arange(n)) / sr
            mono = (0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
            w.write(mono if channels == 1 else np.stack([mono, 0.5 * mono]))
            done += n


def forward_only(checkpoint: str, seconds: float, queries: list[str], device: str = "cpu") -> Callable[[], object]:
    """The model path alone (STFT, U-Net, masks, iSTFT) over ``seconds`` of model-rate audio, as a
    call to time: the model is loaded and warmed up here, outside the timing."""
    import torch

    from clipsep_ray.separate import Separator, separate

    sep = Separator.from_checkpoint(checkpoint, device=device)
    _, proj = sep.projections(queries)
    x = torch.randn(int(sep.cfg.audio.sample_rate * seconds)) * 0.1
    run = functools.partial(separate, sep.model, sep.frontend, projections=proj, cfg=sep.cfg.inference,
                            device=sep.device)
    run(x[: sep.cfg.audio.sample_rate * 5])  # warm-up
    return lambda: run(x)


def plain_loop(checkpoint: str, folder: str, out: str, queries: list[str], device: str = "cpu") -> None:
    """What `clipsep-ray separate FOLDER` does; timed whole, loading the checkpoint and the CLIP
    text tower included, as the archive job's times include its actors' start and model loading."""
    from clipsep_ray.commands.separate import collect_inputs
    from clipsep_ray.separate import Separator

    sep = Separator.from_checkpoint(checkpoint, device=device)
    names, _ = sep.projections(queries)
    for src, name in collect_inputs([folder]):
        sep.separate_file(src, f"{out}/{name}", names, format="flac")


def archive(checkpoint: str, folder: str, out: str, queries: list[str], actors: int, pipeline: str,
            device: str = "cpu") -> dict:
    from clipsep_ray.batch.archive import separate_archive

    if device == "cuda":  # the GPU shared by the actors; decode and encode tasks take the many cores
        kw = {"gpus_per_actor": 1.0 / actors, "cpus_per_actor": 2.0, "task_cpus": 1.0}
    else:  # the whole box, shared by the actors (2 cores: one actor with 2 CPUs, so 2 threads, or
        # two with 1 each), less what the staged pipeline's decode and encode tasks reserve
        box = float(os.cpu_count() or 2)
        task = 0.25 if box <= 4 else 1.0
        kw = {"cpus_per_actor": (box - (2 * task if pipeline == "staged" else 0.0)) / actors, "task_cpus": task}
    s = separate_archive(checkpoint, queries, folder, out, actors=actors, pipeline=pipeline, log=lambda m: None, **kw)
    assert s["failed"] == 0, s["failures"]
    return s


def each_in_new_folder(run: Callable[[str], object], root: str) -> Callable[[], object]:
    """``run(out)`` as a call to time, each call writing to a new folder ``root-N`` (the archive job
    would skip every input already done in a folder it wrote before)."""
    n = itertools.count()
    return lambda: run(f"{root}-{next(n)}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny"])
    p.add_argument("--files", type=int, default=6)
    p.add_argument("--minutes", type=float, default=6.0, help="audio in the throughput archive")
    p.add_argument("--long-minutes", type=float, default=60.0, help="the long file of the memory check (0: skip)")
    p.add_argument("--queries", type=int, default=2)
    p.add_argument("--pipelines", nargs="+", default=["fused", "staged"], choices=["fused", "staged"])
    p.add_argument("--actors", nargs="+", type=int, default=[1, 2], help="model actor counts to time")
    p.add_argument("--rounds", type=int, default=1, help="repeat every variant, interleaved; medians are reported")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: the model on the GPU in every variant (the actors share it)")
    p.add_argument("--out", default="benchmarks/results/archive_cpu.jsonl")
    args = p.parse_args(argv)

    from clipsep_ray.runtime import cpu_has_bf16, init_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init_ray()
    queries = ["dog barking", "siren", "violin", "rain"][: args.queries]
    work = tempfile.mkdtemp(prefix="bench-archive-")
    machine = {"cpus": os.cpu_count(), "cpu": describe_machine(), "bf16": cpu_has_bf16(), "device": args.device}
    if args.device == "cuda":
        import torch

        machine["gpu"] = torch.cuda.get_device_name(0)
    try:
        folder = os.path.join(work, "archive")
        per = args.minutes * 60 / args.files
        for i in range(args.files):
            sr, ch = RATES[i % len(RATES)]
            write_file(os.path.join(folder, f"f{i}.flac"), per, sr, ch, i)
        audio_h = args.minutes / 60
        for preset in args.presets:
            ckpt = make_checkpoint(preset, work)
            dev = args.device
            variants = {"forward_only": forward_only(ckpt, args.minutes * 60, queries, dev),
                        "plain_loop": each_in_new_folder(lambda out: plain_loop(ckpt, folder, out, queries, dev),
                                                         os.path.join(work, f"plain-{preset}")),
                        **{f"{p}_{a}_actors": each_in_new_folder(
                            lambda out, p=p, a=a: archive(ckpt, folder, out, queries, a, p, dev),
                            os.path.join(work, f"archive-{preset}-{p}-{a}"))
                           for p in args.pipelines for a in args.actors}}
            # Interleaved, the starting variant rotating: a slow spell of the box touches every variant alike.
            timed = interleaved(variants, args.rounds, warmup=0)
            rows = {k: t["median"] for k, t in timed.items()}
            fwd, plain = rows["forward_only"], rows["plain_loop"]
            pairs = [(p, a) for p in args.pipelines for a in args.actors]
            result = {"bench": "archive_throughput", "preset": preset, "queries": len(queries), "files": args.files,
                      "audio_hours": audio_h, "rounds": args.rounds, "machine": machine,
                      "seconds": {k: round(v, 2) for k, v in rows.items()},
                      "seconds_each_round": {k: [round(x, 2) for x in t["runs"]] for k, t in timed.items()},
                      "audio_hours_per_hour": {k: round(audio_h * 3600 / v, 1) for k, v in rows.items()},
                      **{f"{p}_{a}_vs_plain": round(plain / rows[f"{p}_{a}_actors"], 3) for p, a in pairs},
                      **{f"{p}_{a}_vs_forward_only": round(fwd / rows[f"{p}_{a}_actors"], 3) for p, a in pairs},
                      **{f"{p}_speedup_2_actors": round(rows[f"{p}_1_actors"] / rows[f"{p}_2_actors"], 3)
                         for p in args.pipelines if {1, 2} <= set(args.actors)}}
            print(json.dumps(result), flush=True)
            _append(args.out, result)
        if args.long_minutes:
            ckpt = make_checkpoint(args.presets[0], work)
            for pipeline in args.pipelines:  # one actor; a fused actor's peak is its "separate" column
                peaks = {}
                for minutes in (1.0, args.long_minutes):
                    d = os.path.join(work, f"mem-{minutes:g}")
                    write_file(os.path.join(d, "long.flac"), minutes * 60, 44100, 2, 7)
                    t0 = time.perf_counter()
                    s = archive(ckpt, d, os.path.join(work, f"mem-out-{pipeline}-{minutes:g}"), queries, 1, pipeline,
                                args.device)
                    peaks[f"{minutes:g}_min"] = {**s["peak_rss_mb"], "wall_s": round(time.perf_counter() - t0, 1)}
                    shutil.rmtree(d)
                result = {"bench": "archive_memory", "preset": args.presets[0], "pipeline": pipeline,
                          "input": "44.1 kHz stereo FLAC", "machine": machine, "peak_rss_mb": peaks}
                print(json.dumps(result), flush=True)
                _append(args.out, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _append(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps({**result, "date": time.strftime("%Y-%m-%d")}) + "\n")


if __name__ == "__main__":
    main()
