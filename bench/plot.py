"""Throughput and p99 latency against concurrency, one line per server and endpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(13, 4.6))
    styles = {"/predict": "-", "/attention-map": "--"}
    for server, data in result["servers"].items():
        for endpoint, runs in data["runs"].items():
            c = [r["concurrency"] for r in runs]
            label = f"{_short(server)} {endpoint}"
            throughput.plot(c, [r["requests_per_s"] for r in runs], styles[endpoint], marker="o", label=label)
            latency.plot(c, [r["p99_ms"] for r in runs], styles[endpoint], marker="o", label=label)
    ceiling = result.get("in_process", {}).get("ceiling_predict_images_per_s")
    if ceiling:
        throughput.axhline(ceiling, color="grey", linestyle=":", label="in-process ceiling /predict")
    for axis, title in ((throughput, "requests/s"), (latency, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent connections (wrk)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    latency.set_yscale("log")
    figure.legend(*throughput.get_legend_handles_labels(), loc="center right", fontsize=7)
    machine = result["machine"]
    figure.suptitle(
        f"{machine.get('cpu_model', '')} ({machine['cpus']} cores) {machine.get('gpu', '')}", fontsize=9
    )
    figure.tight_layout(rect=(0, 0, 0.69, 1))
    figure.savefig(path, dpi=110)


def _short(server: str) -> str:
    """``glimpse:WORKERS=2,GLIMPSE_TORCH_THREADS=1`` → ``glimpse workers=2 torch_threads=1``."""
    name, _, variant = server.partition(":")
    return " ".join([name, *(kv.removeprefix("GLIMPSE_").lower() for kv in variant.split(",") if kv)])


if __name__ == "__main__":
    source = Path(sys.argv[1])
    plot(json.loads(source.read_text()), source.with_suffix(".png"))
