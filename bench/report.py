"""A Markdown table of one benchmark result, for docs/performance.md.

python -m bench.report RESULT.json
"""

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


def ratios(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The issue's targets for each Glimpse variant: over TorchServe at c=16, over the ceiling, maps."""
    servers = result["servers"]

    def run(server: str, endpoint: str, concurrency: int) -> dict[str, Any]:
        return next(r for r in servers[server]["runs"][endpoint] if r["concurrency"] == concurrency)

    out: dict[str, dict[str, float]] = {}
    for name in (s for s in servers if s.startswith("glimpse")):
        glimpse, figures = servers[name]["runs"], {}
        best = max(glimpse["/predict"], key=lambda r: r["requests_per_s"])
        if "in_process" in result:
            ceiling = result["in_process"]["ceiling_predict_images_per_s"]
            figures["best_predict_over_ceiling"] = best["requests_per_s"] / ceiling
        if "/attention-map" in glimpse:
            best_map = max(r["requests_per_s"] for r in glimpse["/attention-map"])
            figures["best_attention_over_best_predict"] = best_map / best["requests_per_s"]
            figures["c16_attention_over_c16_predict"] = (
                run(name, "/attention-map", 16)["requests_per_s"]
                / run(name, "/predict", 16)["requests_per_s"]
            )
        if "torchserve" in servers:
            for endpoint in glimpse:
                ours, theirs = run(name, endpoint, 16), run("torchserve", endpoint, 16)
                figures[f"c16{endpoint}_rps_over_torchserve"] = (
                    ours["requests_per_s"] / theirs["requests_per_s"]
                )
                figures[f"c16{endpoint}_p99_over_torchserve"] = ours["p99_ms"] / theirs["p99_ms"]
                ours, theirs = run(name, endpoint, 64), run("torchserve", endpoint, 64)
                figures[f"c64{endpoint}_rps_over_torchserve"] = (
                    ours["requests_per_s"] / theirs["requests_per_s"]
                )
        out[name] = figures
    return out


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    print(table(data))
    print()
    print(json.dumps(ratios(data), indent=1))
