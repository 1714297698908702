"""CPU cost of the archive job's decode and encode tasks, per hour of audio (no Ray, no model).

On a GPU the staged pipeline's model actors are rarely the limit; the decode tasks (decode,
resample to the model rate, write a temporary WAV) and the encode tasks (read the stems, resample
them to the input's rate, encode the stems and the residual) are. This times both stage functions
(``batch.stages.decode`` / ``encode``, the ones the job runs) in this process with one math thread,
on a ``--minutes`` file per input kind, and reports CPU-seconds per hour of audio: the number of
CPUs to give the tasks for a target throughput. The stems are copies of the decoded input (their
content does not change the cost).

    python benchmarks/bench_archive_stages.py --minutes 10 --queries 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_archive import write_file  # noqa: E402
from timing import machine as describe_machine  # noqa: E402

KINDS = [(44100, 2, "flac"), (48000, 2, "wav"), (16000, 1, "flac")]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def stage_costs(folder: str, sr: int, channels: int, ext: str, minutes: float, names: list[str], model_sr: int,
                fmt: str) -> dict:
    from clipsep_ray.batch import stages

    src = os.path.join(folder, f"in-{sr}.{ext}")
    write_file(src, minutes * 60, sr, channels, 0)
    out = os.path.join(folder, f"out-{sr}")
    row = {"input": src, "key": f"k{sr}", "out_dir": f"o{sr}", "relative_path": src}
    c0 = cpu_seconds()
    row = stages.decode(row, model_sr=model_sr, output_uri=out, block_seconds=30.0)
    c1 = cpu_seconds()
    for i in range(len(names)):  # what the model actor would leave: one model-rate stem per query
        shutil.copy(stages.tmp_uri(out, row["key"], "input.wav"), stages.tmp_uri(out, row["key"], f"stem{i}.wav"))
    c2 = cpu_seconds()
    stages.encode(row, names=names, model_sr=model_sr, output_uri=out, fmt=fmt, block_seconds=30.0)
    c3 = cpu_seconds()
    per_hour = 60.0 / minutes
    return {"input": f"{sr} Hz, {channels} ch, {ext}", "decode_cpu_s_per_audio_h": round(per_hour * (c1 - c0), 1),
            "encode_cpu_s_per_audio_h": round(per_hour * (c3 - c2), 1),
            "audio_h_per_h_per_cpu": round(3600 / (per_hour * (c3 - c2 + c1 - c0)), 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="audio per input kind")
    p.add_argument("--queries", type=int, default=2, help="stems per input (plus the residual)")
    p.add_argument("--preset", default="paper", help="gives the model rate")
    p.add_argument("--format", default="flac", choices=["flac", "wav"])
    p.add_argument("--out", default="benchmarks/results/archive_cpu.jsonl")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as in a 1-CPU task
    import torch

    from clipsep_ray.config import load_config

    torch.set_num_threads(1)
    model_sr = load_config(args.preset).audio.sample_rate
    names = ["dog barking", "siren", "violin", "rain", "speech", "engine", "bird", "drums"][: args.queries]
    folder = tempfile.mkdtemp(prefix="bench-stages-")
    try:
        rows = [stage_costs(folder, sr, ch, ext, args.minutes, names, model_sr, args.format) for sr, ch, ext in KINDS]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {"bench": "archive_stage_cpu", "preset": args.preset, "model_sr": model_sr, "queries": args.queries,
              "format": args.format, "minutes": args.minutes, "machine": describe_machine(), "stages": rows,
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
