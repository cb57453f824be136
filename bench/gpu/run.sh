#!/usr/bin/env bash
# The GPU benchmark, offline: installs bench/gpu/wheels (see fetch.sh) beside the host's torch, unpacks
# wrk into /tmp, then runs Glimpse on the bundled model at concurrency 256 and the 224² RGB configuration
# against its raw batched-forward throughput. Extra arguments go to bench.run (e.g. --workers 8).
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/glimpse-site \
  bench/gpu/wheels/*.whl
export PYTHONPATH="/tmp/glimpse-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
for deb in bench/gpu/wheels/*.deb; do dpkg -x "$deb" /tmp/glimpse-wrk; done
export PATH="/tmp/glimpse-wrk/usr/bin:$PATH"
export LD_LIBRARY_PATH="/tmp/glimpse-wrk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
wrk -v | head -1
python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))'
python3 -m bench.run --device cuda --servers glimpse --endpoints /predict /attention-map \
  --concurrency 16 64 256 --wrk-threads 4 --large "$@"
