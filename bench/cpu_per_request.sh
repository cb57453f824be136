#!/usr/bin/env bash
# CPU time per request of one Glimpse worker under wrk, for two or more source trees, alternating
# rounds so that the machine's swings hit every tree alike. CPU time (user + system, all threads, from
# /proc/PID/stat) per request moves far less with a contended VM than requests/s does.
#
#   git worktree add /tmp/glimpse-old <commit>
#   bash bench/cpu_per_request.sh ROUNDS CONCURRENCY ENDPOINT /tmp/glimpse-old "$PWD"
#
# Needs wrk and the project venv (.venv); each tree's app/ and models/ are served from the tree itself.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD python=$PWD/.venv/bin/python image=$PWD/bench/canvas60.png lua=$PWD/bench/wrk/multipart.lua
rounds=$1 connections=$2 endpoint=$3
shift 3
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# bash bench/cpu_per_request.sh $rounds $connections $endpoint $*"
hz=$(getconf CLK_TCK)
for round in $(seq "$rounds"); do
  for tree in "$@"; do
    cd "$tree"
    GLIMPSE_TORCH_THREADS=1 GLIMPSE_DECODE_THREADS=1 "$python" -m uvicorn app.main:app --port 8129 \
      --log-level warning --no-access-log >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 120); do curl -sf localhost:8129/health/ready >/dev/null && break; sleep 0.25; done
    IMAGE=$image wrk -s "$lua" -c"$connections" -t1 -d2s "http://127.0.0.1:8129$endpoint" >/dev/null
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    out=$(IMAGE=$image wrk -s "$lua" -c"$connections" -t1 -d8s "http://127.0.0.1:8129$endpoint")
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    cpu_us=$(python3 -c "print(round(($after - $before) / $hz / $requests * 1e6))")
    echo "$tree round $round: $requests requests, $rate req/s, $cpu_us µs of CPU per request"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    cd "$root"
  done
done
