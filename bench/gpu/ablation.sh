#!/usr/bin/env bash
# bench/gpu/ablation.py on the GPU host, without and then with CUDA MPS (wheels and wrk as in run.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/glimpse-site \
  bench/gpu/wheels/*.whl
export PYTHONPATH="/tmp/glimpse-site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for deb in bench/gpu/wheels/*.deb; do dpkg -x "$deb" /tmp/glimpse-wrk; done
export PATH="/tmp/glimpse-wrk/usr/bin:$PATH"
export LD_LIBRARY_PATH="/tmp/glimpse-wrk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python3 -m bench.gpu.ablation default
python3 -m bench.gpu.ablation large
export CUDA_MPS_PIPE_DIRECTORY=/tmp/glimpse-mps CUDA_MPS_LOG_DIRECTORY=/tmp/glimpse-mps-log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
if nvidia-cuda-mps-control -d; then
  echo "== CUDA MPS on"
  python3 -m bench.gpu.ablation default
  python3 -m bench.gpu.ablation large
  echo quit | nvidia-cuda-mps-control
fi
