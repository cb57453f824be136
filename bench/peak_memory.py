"""Peak resident memory of a Glimpse worker serving large images: what a pod's memory limit must cover.

Starts ``python -m app.serve`` with one worker and the given settings, or measures a server already
running (``--url`` with ``--pid``: a Ray Serve replica, say), then sends ``--rounds`` rounds of
``--concurrency`` ``/attention-map`` requests with overlays of a ``--size``² noise JPEG at once, and
reports the resident memory after ready, the peak (VmHWM) after each round, and the answers' statuses
(a request over the in-flight budget gets 503). ``--other-pids`` adds the resident memory of other
processes, such as the Ray processes a node runs beside its replicas.

    python -m bench.peak_memory --size 2048 --settings \\
        GLIMPSE_TORCH_THREADS=1,GLIMPSE_DECODE_THREADS=1,GLIMPSE_MAX_IMAGE_PIXELS=4194304,GLIMPSE_MAX_INFLIGHT_PIXELS=4194304

Writes bench/results/<stamp>-<host>-peak-memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.run import BENCH, glimpse_server, peak_rss_mib, result_header, rss_mib, settings, write_result

PORT = 8530


def own_rss_mib(pid: int) -> float:
    """One process's resident memory, without its children (a raylet's include the replicas)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def noise_jpeg(size: int) -> bytes:
    """A size² RGB noise JPEG: a photo's worth of pixels that compresses like one (a few MB)."""
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


async def one_round(url: str, image: bytes, concurrency: int) -> Counter[int]:
    async with httpx.AsyncClient(timeout=300) as http:

        async def one() -> int:
            files = {"file": ("noise.jpg", image, "image/jpeg")}
            response = await http.post(f"{url}/attention-map", params={"overlay": "true"}, files=files)
            return response.status_code

        return Counter(await asyncio.gather(*(one() for _ in range(concurrency))))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", type=settings, default={}, help="GLIMPSE_*=value,… for the server")
    parser.add_argument("--url", help="a running server instead of starting one (needs --pid)")
    parser.add_argument("--pid", type=int, help="the running server's process")
    parser.add_argument("--other-pids", type=int, nargs="*", default=[])
    args = parser.parse_args()
    if (args.url is None) != (args.pid is None):
        parser.error("--url and --pid go together")
    image = noise_jpeg(args.size)
    result: dict[str, Any] = {**result_header("bench.peak_memory"), "image_bytes": len(image)}
    running = {"base": args.url, "pid": args.pid}
    with nullcontext(running) if args.url else glimpse_server(args.settings, PORT) as server:
        url, pid = server["base"], server["pid"]
        result["rss_mib_after_ready"] = rss_mib(pid)
        result["rounds"] = []
        for number in range(args.rounds):
            statuses = asyncio.run(one_round(url, image, args.concurrency))
            peak = peak_rss_mib(pid)
            now = rss_mib(pid)
            result["rounds"].append({"statuses": dict(statuses), "peak_rss_mib": peak, "rss_mib": now})
            print(f"round {number}: {dict(statuses)}, peak {peak:.0f} MiB", flush=True)
        if args.other_pids:
            result["other_rss_mib"] = sum(own_rss_mib(other) for other in set(args.other_pids))
    others = result.get("other_rss_mib", 0)
    print(f"after ready {result['rss_mib_after_ready']:.0f} MiB; other processes {others:.0f} MiB")
    write_result(BENCH / "results", "peak-memory", result)


if __name__ == "__main__":
    main()
