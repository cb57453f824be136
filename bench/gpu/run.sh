#!/usr/bin/env bash
# The GPU benchmark, offline: installs bench/gpu/wheels (see fetch.sh) beside the host's torch, unpacks
# wrk and TorchServe with its Java runtime into /tmp, then serves the bundled model at concurrency 16,
# 64 and 256 on the GPU: Glimpse, the naive endpoint and TorchServe (bf16, one worker per core, two
# batch settings), and Glimpse again on the host's CPU cores; then the 224² RGB configuration against
# its raw batched-forward throughput. A second pass repeats the GPU servers under CUDA MPS, so that the
# workers' kernels share the GPU instead of taking turns (skipped when nvidia-cuda-mps-control is
# missing or fails to start). PASSES=mps runs only the second pass, PASSES=plain only the first;
# SKIP_LARGE=1 leaves the 224² configuration out.
# Extra arguments go to both bench.run passes (for example --duration 6 --out DIR; a later --servers
# or --large replaces the lists below).
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/glimpse-site \
  bench/gpu/wheels/*.whl
export PYTHONPATH="/tmp/glimpse-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
for deb in bench/gpu/wheels/*.deb; do dpkg -x "$deb" /tmp/glimpse-wrk; done
export PATH="/tmp/glimpse-wrk/usr/bin:$PATH"
export LD_LIBRARY_PATH="/tmp/glimpse-wrk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
wrk -v | head -1 || true  # wrk -v exits 1
python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))'
one="GLIMPSE_TORCH_THREADS=1,GLIMPSE_DECODE_THREADS=1"
common=(--device cuda --endpoints /predict /attention-map --concurrency 16 64 256 --wrk-threads 4 --duration 8)
servers=("glimpse:WORKERS=12,$one" "glimpse:WORKERS=14,GLIMPSE_DEVICE=cpu,$one" naive)
mps_servers=("glimpse:WORKERS=12,$one" "glimpse:WORKERS=14,$one")
cores=$(nproc)
if source bench/gpu/torchserve.sh; then
  servers+=("torchserve:AMP=bfloat16,WORKERS=$cores,BATCH=32,DELAY=5" "torchserve:AMP=bfloat16,WORKERS=$cores,BATCH=16,DELAY=2")
  mps_servers+=("torchserve:AMP=bfloat16,WORKERS=$cores,BATCH=16,DELAY=2")
else
  echo "no TorchServe archives in bench/gpu/wheels (fetch.sh makes them): TorchServe skipped"
fi
large=(--large "glimpse:WORKERS=12,$one")
if [[ -n ${SKIP_LARGE:-} ]]; then large=(); fi
passes=${PASSES:-plain mps}
if [[ $passes == *plain* ]]; then
  python3 -m bench.run "${common[@]}" --servers "${servers[@]}" "${large[@]}" "$@"
fi
if [[ $passes == *mps* ]] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/glimpse-mps CUDA_MPS_LOG_DIRECTORY=/tmp/glimpse-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d; then
    echo "== CUDA MPS on"
    python3 -m bench.run "${common[@]}" --skip-in-process --note "CUDA MPS on" \
      --servers "${mps_servers[@]}" "${large[@]}" "$@" || echo "MPS pass failed"
    echo quit | nvidia-cuda-mps-control
  fi
fi
