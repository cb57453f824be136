"""Two versions of Glimpse at the same load, both servers up, in alternating rounds.

The A/B for a change to the serving code: ``--old`` is a checkout of the commit before it (``git worktree
add /tmp/glimpse-old <commit>``), run with this checkout's interpreter and packages; the new server is
this checkout. As in :mod:`bench.head_to_head`, wrk loads one server and then the other, the order
flipped every round, so both see the same stretches of a shared machine; the figure is the median of
the per-round ratios new / old, for each endpoint and concurrency.

    python -m bench.ab --old /tmp/glimpse-old --rounds 6 --concurrency 16 64 \\
        --endpoint /predict /attention-map \\
        --glimpse WORKERS=2,GLIMPSE_TORCH_THREADS=1,GLIMPSE_DECODE_THREADS=1

Writes bench/results/<stamp>-<host>-ab.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.run import BENCH, PY, result_header, settings, wait_ready, write_result, wrk

PORTS = {"old": 8500, "new": 8510}


@contextmanager
def server(checkout: Path, env: dict[str, str], port: int, workers: int) -> Iterator[None]:
    """``python -m app.serve`` of ``checkout`` on ``port``, ready; stopped on exit."""
    command = [
        PY,
        "-m",
        "app.serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    ]
    # The checkout's own packages come first: ``-m`` puts the working directory at the front of sys.path.
    process = subprocess.Popen(command, cwd=checkout, env={**os.environ, **env, "PYTHONPATH": str(checkout)})
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/ready", process)
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old", type=Path, required=True, help="a checkout of the commit to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--endpoint", nargs="+", default=["/predict", "/attention-map"])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--glimpse", type=settings, default={}, help="WORKERS=2,GLIMPSE_SETTING=value,...")
    parser.add_argument("--new-env", type=settings, default={}, help="K=V,... for the new server alone")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    env = dict(args.glimpse)
    workers = int(env.pop("WORKERS", "1"))
    image = BENCH / "canvas60.png"
    checkouts = {"old": args.old.resolve(), "new": BENCH.parent}
    result: dict[str, Any] = {
        **result_header("bench.ab"),
        "old": str(checkouts["old"]),
        "env": env,
        "new_env": args.new_env,
        "points": [],
    }
    with (
        server(checkouts["old"], env, PORTS["old"], workers),
        server(checkouts["new"], env | args.new_env, PORTS["new"], workers),
    ):
        for endpoint in args.endpoint:
            for concurrency in args.concurrency:
                urls = {name: f"http://127.0.0.1:{port}{endpoint}" for name, port in PORTS.items()}
                for url in urls.values():
                    wrk(url, concurrency, 2, 1, image)  # warm the path
                rounds = []
                for round_ in range(args.rounds):
                    order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
                    runs = {name: wrk(urls[name], concurrency, args.duration, 1, image) for name in order}
                    for run in runs.values():
                        del run["raw"]
                    ratio = runs["new"]["requests_per_s"] / runs["old"]["requests_per_s"]
                    rounds.append({"order": order, **runs, "ratio": ratio})
                    print(
                        f"{endpoint} c={concurrency} round {round_ + 1}: new "
                        f"{runs['new']['requests_per_s']:,.0f} req/s (p99 {runs['new']['p99_ms']:.1f} ms, "
                        f"{runs['new']['errors']} errors), old {runs['old']['requests_per_s']:,.0f} "
                        f"(p99 {runs['old']['p99_ms']:.1f}, {runs['old']['errors']} errors): {ratio:.3f}",
                        flush=True,
                    )
                median = statistics.median(r["ratio"] for r in rounds)
                print(f"{endpoint} c={concurrency}: median new/old {median:.3f}", flush=True)
                result["points"].append(
                    {
                        "endpoint": endpoint,
                        "concurrency": concurrency,
                        "median_ratio": median,
                        "rounds": rounds,
                    }
                )
    write_result(args.out, "ab", result)


if __name__ == "__main__":
    main()
