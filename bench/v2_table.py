"""The v2 side-by-side's medians as a Markdown table (docs/protocol.md), from result files of
``bench.v2_head_to_head``:

    python -m bench.v2_table bench/results/*-v2-head-to-head.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(path: Path) -> list[str]:
    result = json.loads(path.read_text())
    workers = result["glimpse"]["command"].split("--workers ")[1].split()[0]
    settings = [f"{k}={v}" for k, v in result["glimpse"]["env"].items() if k != "GLIMPSE_DEVICE"]
    glimpse = ", ".join([f"WORKERS={workers}", *settings])
    triton = ", ".join(f"{k}={v}" for k, v in result["triton"]["config"].items())
    load = result["machine"].get("load_average_at_start", [0])[0]
    lines = []
    for connections, figures in result["by_concurrency"].items():
        lines.append(
            f"| {path.name} | {result['machine']['cpus']} CPUs, load {load:.0f} | {glimpse} "
            f"| {triton} | {connections} | {_server(figures, 'glimpse-v2')} | {_server(figures, 'triton')} "
            f"| {_server(figures, 'glimpse-predict')} | {figures['median_ratio_vs_triton']:.2f}× "
            f"| {figures.get('median_ratio_vs_predict', float('nan')):.2f}× |"
        )
    return lines


def _server(figures: dict[str, float], name: str) -> str:
    """req/s, p99 and (when measured) CPU ms per request, each the median over the rounds."""
    if f"median_{name}_req_s" not in figures:
        return "–"
    text = f"{figures[f'median_{name}_req_s']:.0f} / {figures[f'median_{name}_p99_ms']:.0f} ms"
    cpu = figures.get(f"median_{name}_cpu_ms_per_request")
    return text if cpu is None else f"{text} / {cpu:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, nargs="+")
    args = parser.parse_args()
    print(
        "| result file | machine | Glimpse | Triton | c | Glimpse v2: req/s / p99 / CPU per request "
        "| Triton: same | Glimpse /predict: same | v2 ÷ Triton req/s | v2 ÷ /predict req/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in args.results:
        print("\n".join(rows(path)))


if __name__ == "__main__":
    main()
