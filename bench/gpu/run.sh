#!/usr/bin/env bash
# The GPU benchmark, offline: installs bench/gpu/wheels (see fetch.sh) beside the host's torch, unpacks
# wrk into /tmp, then serves the bundled model at concurrency 16, 64 and 256 with several uvicorn worker
# counts, and the 224² RGB configuration against its raw batched-forward throughput.
# Extra arguments go to bench.run and replace the defaults below that they name.
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
python3 -m bench.run --device cuda --endpoints /predict /attention-map --concurrency 16 64 256 --wrk-threads 4 \
  --servers "glimpse:WORKERS=8,$one" "glimpse:WORKERS=12,$one" \
  --large "glimpse:WORKERS=4,GLIMPSE_TORCH_THREADS=1,GLIMPSE_DECODE_THREADS=3" "glimpse:WORKERS=12,$one" \
  "$@"
