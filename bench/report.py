"""A Markdown table of one benchmark result, for the README: ``python -m bench.report RESULT.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def table(result: dict[str, Any]) -> str:
    lines = [
        "| server | endpoint | concurrency | requests/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for server, data in result["servers"].items():
        for endpoint, runs in data["runs"].items():
            for r in runs:
                lines.append(
                    f"| {server} | {endpoint} | {r['concurrency']} | {r['requests_per_s']:,.0f} | "
                    f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |"
                )
    return "\n".join(lines)


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """The issue's targets: Glimpse over TorchServe at c=16, over the ceiling, maps over predictions."""
    servers = result["servers"]

    def run(server: str, endpoint: str, concurrency: int) -> dict[str, Any]:
        return next(r for r in servers[server]["runs"][endpoint] if r["concurrency"] == concurrency)

    out: dict[str, float] = {}
    glimpse = servers["glimpse"]["runs"]
    best = max(glimpse["/predict"], key=lambda r: r["requests_per_s"])
    if "in_process" in result:
        out["best_predict_over_ceiling"] = (
            best["requests_per_s"] / result["in_process"]["ceiling_predict_images_per_s"]
        )
    if "/attention-map" in glimpse:
        best_map = max(r["requests_per_s"] for r in glimpse["/attention-map"])
        out["best_attention_over_best_predict"] = best_map / best["requests_per_s"]
    if "torchserve" in servers:
        ours, theirs = run("glimpse", "/predict", 16), run("torchserve", "/predict", 16)
        out["c16_predict_rps_over_torchserve"] = ours["requests_per_s"] / theirs["requests_per_s"]
        out["c16_predict_p99_over_torchserve"] = ours["p99_ms"] / theirs["p99_ms"]
        if "/attention-map" in glimpse:
            ours, theirs = run("glimpse", "/attention-map", 16), run("torchserve", "/attention-map", 16)
            out["c16_attention_rps_over_torchserve_explanations"] = (
                ours["requests_per_s"] / theirs["requests_per_s"]
            )
    return out


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    print(table(data))
    print()
    print(json.dumps(ratios(data), indent=1))
