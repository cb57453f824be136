#!/usr/bin/env bash
# Run on a machine WITH network (Debian 12, x86-64): downloads what the offline GPU host lacks into
# bench/gpu/wheels/ — Python 3.12 wheels for the service and the benchmark, and wrk's Debian packages.
# The host's own torch (CUDA), numpy and pillow are used as they are.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p wheels
PIP_PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
               --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PIP_PLATFORMS[@]}" -d wheels -r requirements.txt
(cd wheels && apt-get download wrk libluajit-5.1-2 libluajit-5.1-common)
ls -l wheels
