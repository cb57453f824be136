"""``/attention-map`` against ``/predict`` on one Glimpse server, in alternating rounds.

A full ``bench.run`` measures the two endpoints a minute apart, and on a shared VM whose speed swings
from one minute to the next their ratio moves with the swing (0.59 to 0.95 in four full
runs). Here one server stays up and wrk loads the two endpoints in turn, the order flipped every
round; it prints every round and the median of the per-round ratios.

    bash bench/run.sh map-ratio --rounds 8 --concurrency 16 64 \\
        --glimpse WORKERS=2,GLIMPSE_TORCH_THREADS=1,GLIMPSE_DECODE_THREADS=1

Writes bench/results/<stamp>-<host>-map-ratio.json.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from bench.run import BENCH, glimpse_server, result_header, settings, write_result, wrk

PORT = 8440
ENDPOINTS = ("/predict", "/attention-map")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--glimpse", type=settings, default={}, help="WORKERS=2,GLIMPSE_SETTING=value,...")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    image = BENCH / "canvas60.png"
    env = {"GLIMPSE_DEVICE": args.device, **args.glimpse}
    workers = int(env.pop("WORKERS", "1"))
    result: dict[str, Any] = {**result_header("bench.map_ratio"), "rounds": []}
    with glimpse_server(env, PORT, workers) as server:
        result["glimpse"] = {key: server[key] for key in ("command", "ready_s")}
        base = server["base"]
        for endpoint in ENDPOINTS:
            wrk(base + endpoint, max(args.concurrency), 2, 1, image)  # warm the path
        for round_ in range(args.rounds):
            order = ENDPOINTS if round_ % 2 == 0 else ENDPOINTS[::-1]
            for concurrency in args.concurrency:
                runs = {}
                for endpoint in order:
                    runs[endpoint] = wrk(base + endpoint, concurrency, args.duration, 1, image)
                    del runs[endpoint]["raw"]
                ratio = runs["/attention-map"]["requests_per_s"] / runs["/predict"]["requests_per_s"]
                result["rounds"].append(
                    {
                        "round": round_ + 1,
                        "concurrency": concurrency,
                        "order": list(order),
                        **runs,
                        "ratio": ratio,
                    }
                )
                print(
                    f"round {round_ + 1}, c={concurrency}: "
                    f"/predict {runs['/predict']['requests_per_s']:,.0f} req/s, "
                    f"/attention-map {runs['/attention-map']['requests_per_s']:,.0f} req/s, {ratio:.2f}; "
                    f"errors {runs['/predict']['errors']} / {runs['/attention-map']['errors']}",
                    flush=True,
                )
    result["median_ratio"] = {
        str(c): statistics.median(r["ratio"] for r in result["rounds"] if r["concurrency"] == c)
        for c in args.concurrency
    }
    print("median ratio by concurrency:", {c: round(r, 2) for c, r in result["median_ratio"].items()})
    write_result(args.out, "map-ratio", result)


if __name__ == "__main__":
    main()
