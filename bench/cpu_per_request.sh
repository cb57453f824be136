#!/usr/bin/env bash
# CPU time per request of a Glimpse server under wrk, for two or more source trees, alternating
# rounds so that the machine's swings hit every tree alike. CPU time (user + system, all threads of
# uvicorn and its worker processes, from /proc/PID/stat) per request moves far less with a contended
# VM than requests/s does. WORKERS (default 1) sets uvicorn's worker processes.
#
#   git worktree add /tmp/glimpse-old <commit>
#   [WORKERS=2] bash bench/cpu_per_request.sh ROUNDS CONCURRENCY ENDPOINT /tmp/glimpse-old "$PWD"
#
# Needs wrk and the project venv (.venv); each tree's app/ and models/ are served from the tree itself.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD python=$PWD/.venv/bin/python image=$PWD/bench/canvas60.png lua=$PWD/bench/wrk/multipart.lua
rounds=$1 connections=$2 endpoint=$3 workers=${WORKERS:-1}
shift 3
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# WORKERS=$workers bash bench/cpu_per_request.sh $rounds $connections $endpoint $*"
hz=$(getconf CLK_TCK)
cpu_ticks() {  # uvicorn's process and its worker processes, all threads
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
for round in $(seq "$rounds"); do
  for tree in "$@"; do
    cd "$tree"
    GLIMPSE_TORCH_THREADS=1 GLIMPSE_DECODE_THREADS=1 "$python" -m uvicorn app.main:app --port 8129 \
      --workers "$workers" --log-level warning --no-access-log >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 120); do curl -sf localhost:8129/health/ready >/dev/null && break; sleep 0.25; done
    IMAGE=$image wrk -s "$lua" -c"$connections" -t1 -d2s "http://127.0.0.1:8129$endpoint" >/dev/null
    before=$(cpu_ticks "$pid")
    out=$(IMAGE=$image wrk -s "$lua" -c"$connections" -t1 -d8s --latency "http://127.0.0.1:8129$endpoint")
    after=$(cpu_ticks "$pid")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    cpu_us=$(python3 -c "print(round(($after - $before) / $hz / $requests * 1e6))")
    echo "$tree round $round: $requests requests, $rate req/s, p99 $p99, $cpu_us µs of CPU per request"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    cd "$root"
  done
done
