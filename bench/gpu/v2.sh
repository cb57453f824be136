#!/usr/bin/env bash
# The v2 side-by-side on the offline GPU host: Glimpse's /v2/.../infer against Triton (PyTriton, the
# same weights) with the same binary-BYTES request, and Glimpse's multipart /predict in the same rounds,
# at concurrency 16, 64 and 256 on the GPU. Needs fetch.sh's wheels (the service, wrk) and
# fetch-triton.sh's two archives in bench/gpu/wheels; the host's own torch (CUDA) serves both.
# Extra arguments go to bench.v2_head_to_head (a later --glimpse or --triton replaces the ones below).
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/glimpse-site \
  bench/gpu/wheels/*.whl
export PYTHONPATH="/tmp/glimpse-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
for deb in bench/gpu/wheels/*.deb; do dpkg -x "$deb" /tmp/glimpse-wrk; done
export PATH="/tmp/glimpse-wrk/usr/bin:$PATH"
export LD_LIBRARY_PATH="/tmp/glimpse-wrk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for part in core deps; do
  archive=bench/gpu/wheels/triton-$part.tar.xz
  if [[ -f $archive ]]; then tar xJf "$archive" -C /tmp; fi  # two device calls may carry one each
done
[[ -d /tmp/triton-site/pytriton ]] || { echo "no PyTriton in /tmp/triton-site: run fetch-triton.sh" >&2; exit 1; }
# Triton's Python processes: the host's interpreter and torch, PyTriton's site (numpy < 2) first.
export GLIMPSE_TRITON_PYTHON="$(command -v python3)" GLIMPSE_TRITON_SITE=/tmp/triton-site
python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))'
one="GLIMPSE_TORCH_THREADS=1,GLIMPSE_DECODE_THREADS=1"
python3 -m bench.v2_head_to_head --device cuda --concurrency 16 64 256 --wrk-threads 4 --rounds 4 --duration 8 \
  --glimpse "WORKERS=12,$one" --triton INSTANCES=4,MAX_BATCH=64,DELAY_US=1000,THREADS=1,AMP=bfloat16 "$@"
