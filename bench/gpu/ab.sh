#!/usr/bin/env bash
# Serving code A/B on the GPU host: the working tree against an older tree, alternating, two rounds.
#
#   git archive OLD_COMMIT app models bench | (mkdir -p .prof/old && tar -x -C .prof/old)  # here, before
#   bash bench/gpu/ab.sh .prof/old OUT_DIR [bench.run arguments]                        # on the host
#
# (the device tool copies the working tree without .git, so the older tree is made beforehand and
# carried). First checks that the engine's CUDA forward pass makes no implicit host synchronisation,
# then runs the same bench.run command for each tree: 16 GPU workers, /predict and /attention-map,
# concurrency 16, 64 and 256, the in-process figures included; extra arguments replace those (e.g.
# --endpoints /predict --concurrency 256 --skip-in-process). ROUNDS=N sets the rounds (default 2).
# Results go to OUT_DIR/new and OUT_DIR/old.
set -uo pipefail
cd "$(dirname "$0")/../.."
old=$(realpath "$1") out=$(realpath -m "$2") root=$PWD
shift 2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/glimpse-site \
  bench/gpu/wheels/*.whl
for deb in bench/gpu/wheels/*.deb; do dpkg -x "$deb" /tmp/glimpse-wrk; done
export PATH="/tmp/glimpse-wrk/usr/bin:$PATH"
export LD_LIBRARY_PATH="/tmp/glimpse-wrk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PYTHONPATH="/tmp/glimpse-site:$root" python3 -c \
  "from bench.gpu.ablation import check_no_implicit_sync; check_no_implicit_sync()"
args=(--device cuda --endpoints /predict /attention-map --concurrency 16 64 256 --wrk-threads 4 --duration 6
  --servers "glimpse:WORKERS=16,GLIMPSE_TORCH_THREADS=1,GLIMPSE_DECODE_THREADS=1")
for round in $(seq "${ROUNDS:-2}"); do
  for code in new old; do
    tree=$root
    if [[ $code == old ]]; then tree=$old; fi
    echo "== round $round: $code serving code ($tree)"
    (cd "$tree" && PYTHONPATH="/tmp/glimpse-site:$tree" python3 -m bench.run "${args[@]}" \
      "$@" --out "$out/$code" --note "$code serving code, round $round")
  done
done
