"""Glimpse against TorchServe at one load, both servers up, in alternating rounds.

``bench.run`` measures one server after another, minutes apart; on a shared VM whose speed swings
between minutes, a ratio of two such figures moves with the swing. Here both servers stay up and wrk
loads them in turn, round after round, the order flipped every round, so that both see the same
stretches of the machine. It prints every round, and the median of the per-round ratios.

    bash bench/run.sh head-to-head --rounds 8 --concurrency 16 --endpoint /predict \\
        --glimpse WORKERS=2,GLIMPSE_TORCH_THREADS=1,GLIMPSE_DECODE_THREADS=1 \\
        --torchserve AMP=bfloat16,BATCH=8,DELAY=2

Writes bench/results/<stamp>-<host>-head-to-head.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
from pathlib import Path
from typing import Any

from bench.connections import record_split
from bench.run import (
    BENCH,
    TS_BATCH,
    TS_DELAY_MS,
    TS_THREADS,
    glimpse_server,
    result_header,
    settings,
    torchserve_server,
    write_result,
    wrk,
)

GLIMPSE_PORT = 8400


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--endpoint", default="/predict", choices=["/predict", "/attention-map"])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--glimpse", type=settings, default={}, help="WORKERS=2,GLIMPSE_SETTING=value,...")
    parser.add_argument("--torchserve", type=settings, default={}, help="AMP=bfloat16,BATCH=8,DELAY=2,...")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    # torchserve_server reads bench.run's TorchServe defaults from the namespace it is given.
    args.ts_workers, args.ts_batch, args.ts_delay_ms = len(os.sched_getaffinity(0)), TS_BATCH, TS_DELAY_MS
    args.ts_threads = TS_THREADS
    image = BENCH / "canvas60.png"
    from models.checkpoint import DEFAULT_MODEL_DIR

    glimpse_env = {"GLIMPSE_DEVICE": args.device, **args.glimpse}
    workers = int(glimpse_env.pop("WORKERS", "1"))
    result: dict[str, Any] = {**result_header("bench.head_to_head"), "rounds": []}
    with (
        glimpse_server(glimpse_env, GLIMPSE_PORT, workers) as glimpse,
        torchserve_server(args, DEFAULT_MODEL_DIR, 8420, args.torchserve) as torchserve,
    ):
        servers = {"glimpse": glimpse, "torchserve": torchserve}
        urls = {name: server["base"] + server["paths"][args.endpoint] for name, server in servers.items()}
        for name, server in servers.items():
            result[name] = {
                key: server[key]
                for key in ("command", "ready_s", "rss_mib_after_ready", "pss_mib_after_ready")
            }
            wrk(urls[name], args.concurrency, 2, 1, image)  # warm the path
        for round_ in range(args.rounds):
            order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
            split: list[int] = []  # how wrk's connections fell between Glimpse's workers, 2 s in
            sample = threading.Timer(2, record_split, args=(glimpse["pid"], GLIMPSE_PORT, split))
            runs = {}
            for name in order:
                if name == "glimpse":
                    sample.start()
                runs[name] = wrk(urls[name], args.concurrency, args.duration, 1, image)
            sample.join()
            runs["glimpse"]["connections_by_worker"] = split
            for run in runs.values():
                del run["raw"]
            ours, theirs = runs["glimpse"], runs["torchserve"]
            ratio = ours["requests_per_s"] / theirs["requests_per_s"]
            p99_ratio = ours["p99_ms"] / theirs["p99_ms"]
            result["rounds"].append({"order": order, **runs, "ratio": ratio, "p99_ratio": p99_ratio})
            print(
                f"round {round_ + 1}: "
                f"Glimpse {ours['requests_per_s']:,.0f} req/s, p99 {ours['p99_ms']:.1f} ms; "
                f"TorchServe {theirs['requests_per_s']:,.0f} req/s, p99 {theirs['p99_ms']:.1f} ms; "
                f"{ratio:.2f}x, p99 {p99_ratio:.2f}; errors {ours['errors']} / {theirs['errors']}; "
                f"Glimpse's connections by worker {split}",
                flush=True,
            )
    result["median_ratio"] = statistics.median(r["ratio"] for r in result["rounds"])
    result["median_p99_ratio"] = statistics.median(r["p99_ratio"] for r in result["rounds"])
    medians = f"{result['median_ratio']:.2f}x, p99 {result['median_p99_ratio']:.2f}"
    print(f"median over {args.rounds} rounds: {medians}")
    write_result(args.out, "head-to-head", result)


if __name__ == "__main__":
    main()
