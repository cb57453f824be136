#!/usr/bin/env bash
# Training sweep on a GPU host: several runs side by side, one per line of the spec file
# ("name|extra train arguments"); each is selected on validation only, never on the test split.
set -u
spec=${1:?spec file}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p runs
while IFS='|' read -r name extra; do
  [ -z "$name" ] && continue
  eval "timeout ${RUN_LIMIT_S:-570} python3 -m models.train --out runs/$name --quiet --device cuda $extra" > runs/$name.log 2>&1 &
done < "$spec"
wait
for log in runs/*.log; do echo "== $log"; tail -2 "$log"; done
tar cf $OUT/runs.tar runs
