"""How wrk's connections fall between two Glimpse workers: uvicorn's shared socket against app.serve's.

For each launcher it starts 2 workers, then runs TRIALS wrk runs of 3 s with CONNECTIONS connections
opened at once, reads one second in which worker holds which connection (bench/connections.py) and
prints the split with the run's requests/s.

    .venv/bin/python -m bench.connection_split --trials 20 --connections 16

Writes bench/results/<stamp>-<host>-connection-split.json.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import threading
import time
from typing import Any

from bench.connections import record_split
from bench.run import BENCH, ROOT, result_header, wait_ready, write_result, wrk

SETTLE_S = 5.0
LAUNCHERS = {
    "uvicorn --workers 2": ["-m", "uvicorn", "app.main:app", "--workers", "2"],
    "python -m app.serve --workers 2": ["-m", "app.serve", "--workers", "2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    image, port = BENCH / "canvas60.png", 8460
    env = {"GLIMPSE_TORCH_THREADS": "1", "GLIMPSE_DECODE_THREADS": "1", "GLIMPSE_LOG_LEVEL": "warning"}
    result: dict[str, Any] = result_header("bench.connection_split")
    for name, launcher in LAUNCHERS.items():
        command = [sys.executable, *launcher, "--port", str(port), "--log-level", "warning"]
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
        trials = []
        try:
            wait_ready(f"http://127.0.0.1:{port}/health/ready", process)
            time.sleep(SETTLE_S)  # as in the committed result, run before readiness waited for every worker
            for _ in range(args.trials):
                split: list[int] = []
                sample = threading.Timer(1, record_split, args=(process.pid, port, split))
                sample.start()
                run = wrk(f"http://127.0.0.1:{port}/predict", args.connections, 3, 1, image)
                sample.join()
                trials.append({"split": split, "requests_per_s": run["requests_per_s"]})
                print(f"{name}: {split} {run['requests_per_s']:,.0f} req/s", flush=True)
        finally:
            process.terminate()
            process.wait(30)
        splits = collections.Counter("/".join(map(str, t["split"])) for t in trials)
        print(f"{name}: {dict(splits.most_common())}", flush=True)
        result[name] = trials
    write_result(BENCH / "results", "connection-split", result)


if __name__ == "__main__":
    main()
