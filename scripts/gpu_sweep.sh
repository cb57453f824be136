#!/usr/bin/env bash
# Training sweep on a GPU host: several runs side by side, one per line of the spec file
# ("name|extra train arguments"), spread round-robin over the host's GPUs; each is selected on
# validation only, never on the test split. The trained runs come back as runs.tar parts (≤ 15 MiB).
set -u
spec=${1:?spec file}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
runs=$(grep -c '|' "$spec")
# Share the host's cores between the runs: more intra-op threads than cores only adds contention.
export OMP_NUM_THREADS=$(( $(nproc) / runs > 0 ? $(nproc) / runs : 1 ))
mkdir -p runs
index=0
while IFS='|' read -r name extra; do
  [ -z "$name" ] && continue
  eval "CUDA_VISIBLE_DEVICES=$((index % gpus)) timeout ${RUN_LIMIT_S:-570} python3 -m models.train --out runs/$name --quiet --device cuda $extra" > runs/$name.log 2>&1 &
  index=$((index + 1))
done < "$spec"
wait
for log in runs/*.log; do echo "== $log"; tail -2 "$log"; done
if [ -n "${OUT:-}" ]; then tar cf - runs | split -b 15m - "$OUT/runs.tar.part-"; fi
