#!/usr/bin/env bash
# Run on a machine WITH network (Debian 12, x86-64): downloads what the offline GPU host lacks into
# bench/gpu/wheels/ — Python 3.12 wheels for the service and the benchmark, wrk's Debian packages,
# and TorchServe 0.12 with a Java runtime for the side-by-side run.
# The host's own torch (CUDA), numpy and pillow are used as they are.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p wheels
PIP_PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
               --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PIP_PLATFORMS[@]}" -d wheels -r requirements.txt
(cd wheels && apt-get download wrk libluajit-5.1-2 libluajit-5.1-common)
# Ray Serve for ray.sh (bench.ray_scaling), in a folder of its own: ray's wheel alone is ~70 MB.
mkdir -p wheels-ray
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PIP_PLATFORMS[@]}" -d wheels-ray -r requirements-ray.txt
ls -l wheels

# TorchServe for the side-by-side run: its wheels unpacked into one site folder, and a Java 17 runtime
# cut down with jlink (needs a local JDK 17). Both travel as .tar.xz: model-server.jar's 46 MB are
# deflated file by file, and its contents re-compressed as one xz stream take 19 MB, which keeps what
# the GPU host needs under the device tool's 64 MiB; run.sh puts the jar back together.
cd wheels
rm -rf torchserve-site jre && mkdir -p torchserve-site
python3 -m pip download --no-deps --only-binary=:all: -d torchserve-site -r ../../requirements-torchserve-gpu.txt
(cd torchserve-site && for wheel in *.whl; do python3 -m zipfile -e "$wheel" . && rm "$wheel"; done \
  && python3 -m zipfile -e ts/frontend/model-server.jar ts/frontend/model-server.jar.d \
  && rm ts/frontend/model-server.jar)
tar cf - torchserve-site | xz -9 -T0 > torchserve-site.tar.xz && rm -rf torchserve-site
jlink --add-modules java.se,jdk.unsupported,jdk.crypto.ec,jdk.management,jdk.zipfs --strip-debug \
  --no-header-files --no-man-pages --output jre
tar cf - jre | xz -9 -T0 > jre.tar.xz && rm -rf jre
ls -l torchserve-site.tar.xz jre.tar.xz
