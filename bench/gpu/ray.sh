#!/usr/bin/env bash
# Ray Serve scaling on the GPU host, offline (docs/deploy-ray.md, "Scaling"): installs bench/gpu/wheels and
# bench/gpu/wheels-ray (fetch.sh downloads both) beside the host's torch, unpacks wrk, then runs
# bench.ray_scaling: Ray Serve with 1, 2, 4, 8 CPU replicas and GPU-sharing replicas against
# `python -m app.serve` with as many workers, alternating, 3 rounds. Extra arguments go to
# bench.ray_scaling (a later --kinds or --replicas replaces the lists below).
# Ray's wheel is larger than the device tool carries at once (64 MiB): it may travel as parts made with
# `split -b 60M ray-….whl ray-….whl.part-`, one part per call, and is put back together here.
set -euo pipefail
cd "$(dirname "$0")/../.."
for first in bench/gpu/wheels-ray/*.whl.part-aa; do
  [[ -e $first ]] || continue
  cat "${first%aa}"* > "${first%.part-aa}"
done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/glimpse-site \
  bench/gpu/wheels/*.whl bench/gpu/wheels-ray/*.whl
export PYTHONPATH="/tmp/glimpse-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
for deb in bench/gpu/wheels/*.deb; do dpkg -x "$deb" /tmp/glimpse-wrk; done
export PATH="/tmp/glimpse-wrk/usr/bin:/tmp/glimpse-site/bin:$PATH"
export LD_LIBRARY_PATH="/tmp/glimpse-wrk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python3 -c 'import ray, torch; print("ray", ray.__version__, "torch", torch.__version__, torch.cuda.get_device_name(0))'
python3 -m bench.ray_scaling --kinds cpu gpu --replicas 1 2 4 8 --rounds 3 --concurrency 128 --wrk-threads 4 \
  --duration 10 "$@"
