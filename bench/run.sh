#!/usr/bin/env bash
# One command for the CPU benchmark: bash bench/run.sh [bench.run arguments]
# Glimpse against TorchServe in alternating rounds: bash bench/run.sh head-to-head [arguments]
# /attention-map against /predict in alternating rounds: bash bench/run.sh map-ratio [arguments]
# Glimpse's v2 route against Triton (PyTriton) in alternating rounds: bash bench/run.sh v2-head-to-head
# Needs wrk (Debian: apt-get install wrk), the project venv with the bench extra
# (.venv/bin/pip install -e '.[bench]'), and TorchServe in its own venv, made here on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
if [[ ! -x bench/.venv-ts/bin/torchserve ]]; then
  python3 -m venv bench/.venv-ts
  bench/.venv-ts/bin/pip install -q -r bench/requirements-torchserve.txt
fi
if [[ "${1:-}" == head-to-head ]]; then
  shift
  exec .venv/bin/python -m bench.head_to_head "$@"
fi
if [[ "${1:-}" == v2-head-to-head ]]; then
  shift
  make -s -C bench/triton venv
  exec .venv/bin/python -m bench.v2_head_to_head "$@"
fi
if [[ "${1:-}" == map-ratio ]]; then
  shift
  exec .venv/bin/python -m bench.map_ratio "$@"
fi
exec .venv/bin/python -m bench.run "$@"
