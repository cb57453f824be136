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

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"/predict": "-", "/attention-map": "--"}
    for server, data in result["servers"].items():
        for endpoint, runs in data["runs"].items():
            c = [r["concurrency"] for r in runs]
            label = f"{server} {endpoint}"
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
    throughput.legend(fontsize=7)
    machine = result["machine"]
    figure.suptitle(
        f"{machine.get('cpu_model', '')} ({machine['cpus']} cores) {machine.get('gpu', '')}", fontsize=9
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    source = Path(sys.argv[1])
    plot(json.loads(source.read_text()), source.with_suffix(".png"))
