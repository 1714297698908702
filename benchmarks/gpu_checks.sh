#!/usr/bin/env bash
# The GPU checks of issues 11 (archive) and 12 (Serve), as one command for a lent GPU machine:
#   Serve: batching on/off at 1, 8 and 32 clients and the re-query, paper model on the GPU;
#   archive: paper on the GPU, the plain loop against the staged and fused pipelines, 1 and 2
#            actors sharing the GPU, and the model's forward-only throughput.
#   cpus: the archive on every core without the GPU against the plain loop (issue 11's "at least the
#         plain loop on one machine", on more than 2 cores);
#   cpu-serve: Serve batching with an 8-thread CPU replica (a U-Net call on many windows uses the
#         threads better than one on a request's few).
# Results (JSON and logs) land in $OUT (the device tool's folder), else ./gpu-out.
#
# On the device machine, after the two carries of scripts/device-wheels.sh; elsewhere (a GPU box
# with the project installed) it runs the same checks without installing anything.
# GPU_CHECKS_DEVICE=cpu runs the same steps small on the CPU, to check the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0  # no network there
DEVICE=${GPU_CHECKS_DEVICE:-cuda}

if ! python3 -c "import ray" 2>/dev/null && [ -d .device/carry2 ]; then  # the device: the carried wheels
  if [ ! -d /tmp/site/ray ]; then  # not installed by an earlier call on this machine
    part1=$(ls .device/carry1/*.part-aa /tmp/carry1/*.part-aa 2>/dev/null | head -1)
    [ -n "$part1" ] || { echo "first half of Ray's wheel missing: run the carry1 call first"; exit 3; }
    whl=/tmp/wheels/$(basename "${part1%.part-aa}")
    mkdir -p /tmp/wheels && cat "$part1" .device/carry2/*.part-ab > "$whl"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
      "$whl" .device/carry2/*.whl || exit 4
  fi
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  nproc; free -g | sed -n 2p
  python3 -c "import torch, ray; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
python3 -c "import clipsep_ray.serve.app, clipsep_ray.batch.archive, soundfile, open_clip" || exit 5

CORES=$(nproc)
if [ "$DEVICE" = cuda ]; then
  SERVE=(--preset paper --device cuda --num-gpus 1 --num-cpus 2 --ingress-replicas 4 --requests 32 128 256 --rounds 2
         --requery-repeats 10)
  ARCHIVE=(--presets paper --device cuda --files 16 --minutes 40 --pipelines staged fused --actors 1 2)
  CPUS=(--presets paper --device cpu --files 16 --minutes 60 --pipelines fused --actors "$CORES")
  CPU_SERVE=(--preset paper --device cpu --num-cpus 8 --ingress-replicas 4 --clients 1 8 32 --requests 16 64 128
             --rounds 1 --requery-repeats 5)
else
  SERVE=(--preset tiny --device cpu --clients 1 8 --requests 4 16 --rounds 1 --requery-repeats 2)
  ARCHIVE=(--presets tiny --device cpu --files 2 --minutes 0.5 --pipelines staged fused --actors 1)
  CPUS=(--presets tiny --device cpu --files 2 --minutes 0.5 --pipelines fused --actors "$CORES")
  CPU_SERVE=(--preset tiny --device cpu --num-cpus 1 --clients 1 8 --requests 4 16 --rounds 1 --requery-repeats 2)
fi
# Each step's whole output goes to $OUT/<step>.raw.log, the last lines without Ray's chatter to the
# screen and <step>.log, and its exit status (124: its time limit) to the screen and steps.txt.
step() { local name=$1; shift
  "$@" 2>&1 | tee "$OUT/$name.raw.log" | grep -v -E 'WARNING|INFO' | tail -30 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}; echo "step $name: exit $rc" | tee -a "$OUT/steps.txt"
  [ "$rc" = 0 ] || cp -r /tmp/ray/session_latest/logs/serve "$OUT/$name-serve-logs" 2>/dev/null || true; }
# Steps: the arguments choose; by default the two GPU ones, serve and archive (about 7 minutes: with a
# machine's start, most of a 15-minute device budget). cpus and cpu-serve take 2-3 minutes each.
for step in "${@:-serve archive}"; do for s in $step; do case $s in
  serve) step serve timeout 200 python3 benchmarks/bench_serve.py "${SERVE[@]}" --json "$OUT/serve_gpu.json" ;;
  archive) step archive timeout 200 python3 benchmarks/bench_archive.py "${ARCHIVE[@]}" --long-minutes 0 \
             --out "$OUT/archive_gpu.jsonl" ;;
  cpus) CUDA_VISIBLE_DEVICES= step archive_cpus timeout 150 python3 benchmarks/bench_archive.py "${CPUS[@]}" \
          --long-minutes 0 --out "$OUT/archive_cpus.jsonl" ;;
  cpu-serve) CUDA_VISIBLE_DEVICES= step serve_cpus timeout 200 python3 benchmarks/bench_serve.py "${CPU_SERVE[@]}" \
               --json "$OUT/serve_cpus.json" ;;
  *) echo "unknown step $s (serve, archive, cpus, cpu-serve)"; exit 2 ;;
esac; done; done
ls -la "$OUT"
