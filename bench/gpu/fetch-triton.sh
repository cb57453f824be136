#!/usr/bin/env bash
# Run on a machine WITH network (x86-64): what the offline GPU host needs for the v2 side-by-side
# (bench.v2_head_to_head) beyond fetch.sh's wheels: PyTriton (it ships the tritonserver binary) with
# its dependencies and numpy < 2, and tritonclient for the request builder, all for the host's
# Python 3.12, installed into one site folder (the host's own torch is used) and packed as two .tar.xz
# of under 64 MiB each, so that each fits one device-tool call: triton-core.tar.xz (PyTriton itself)
# and triton-deps.tar.xz (everything else). bench/gpu/triton.sh unpacks them on the host.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p wheels
site=$(mktemp -d)/triton-site
python3 -m pip install -q --no-compile --target "$site" --python-version 3.12 --implementation cp \
  --only-binary=:all: --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -r ../triton/requirements-gpu.txt
cd "$(dirname "$site")"
tar cf - triton-site/pytriton triton-site/nvidia_pytriton* | xz -9 -T0 > "$OLDPWD/wheels/triton-core.tar.xz"
tar cf - --exclude 'triton-site/pytriton' --exclude 'triton-site/nvidia_pytriton*' triton-site \
  | xz -9 -T0 > "$OLDPWD/wheels/triton-deps.tar.xz"
ls -l "$OLDPWD"/wheels/triton-*.tar.xz
