#!/usr/bin/env python3
"""Soak test: many mixed requests against a real uvicorn server, with resident-memory drift.

Starts ``uvicorn app.main:app`` on a free loopback port (or uses ``--url`` and ``--pid``), sends
``--requests`` requests from ``--concurrency`` clients — /predict (multipart, JSON, several images),
/attention-map (overlay, grid), /models, health, metrics and invalid images, of sizes 16…256 px — and
checks every answer's status. Resident memory (VmRSS) is sampled after ``--warmup`` requests and then
regularly; the drift is (last − after warm-up) / after warm-up. Prints a JSON summary; exits 1 on any
unexpected answer or a drift above ``--max-drift-pct``.

    .venv/bin/python scripts/soak.py --requests 100000        # the figures of docs/reliability.md
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SIZES = [(16, 16), (28, 28), (60, 60), (60, 60), (96, 64), (128, 128), (256, 192)]


def image_pool(rng: np.random.Generator) -> list[bytes]:
    pool = []
    for height, width in SIZES:
        for fmt in ("PNG", "JPEG", "WEBP"):
            array = (rng.random((height, width)) ** 4 * 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format=fmt)
            pool.append(buffer.getvalue())
    return pool


def request_mix(rng: random.Random, pool: list[bytes]) -> tuple[str, dict[str, Any], int]:
    """(kind, httpx.request arguments, expected status) for one random request."""
    image = rng.choice(pool)
    roll = rng.random()
    if roll < 0.35:
        return "predict", {"method": "POST", "url": "/predict", "files": {"file": ("a", image)}}, 200
    if roll < 0.50:
        body = {"image": base64.b64encode(image).decode()}
        return "predict-json", {"method": "POST", "url": "/predict", "json": body}, 200
    if roll < 0.60:
        files = [("file", ("a", rng.choice(pool))) for _ in range(rng.randint(2, 4))]
        return "predict-batch", {"method": "POST", "url": "/predict", "files": files}, 200
    if roll < 0.75:
        params = {"overlay": rng.choice(["true", "false"]), "include_grid": rng.choice(["true", "false"])}
        request = {
            "method": "POST",
            "url": "/attention-map",
            "params": params,
            "files": {"file": ("a", image)},
        }
        return "attention-map", request, 200
    if roll < 0.82:
        return "models", {"method": "GET", "url": "/models"}, 200
    if roll < 0.90:
        return "ready", {"method": "GET", "url": "/health/ready"}, 200
    if roll < 0.93:
        return "metrics", {"method": "GET", "url": "/metrics"}, 200
    if roll < 0.97:
        return (
            "invalid",
            {"method": "POST", "url": "/predict", "files": {"file": ("a", rng.choice(pool[::3])[:100])}},
            400,
        )
    return "bad-param", {"method": "POST", "url": "/predict", "params": {"top_k": "0"}, "json": {}}, 422


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_")}
    full_env.update({"GLIMPSE_LOG_LEVEL": "warning", **env})
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=full_env)  # noqa: S603 (our own command)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not become ready")


async def soak(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    pool = image_pool(np.random.default_rng(args.seed))
    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    unexpected: list[str] = []
    samples: list[tuple[int, float]] = []
    baseline: float | None = None
    sent = mismatches = 0
    started = time.perf_counter()
    sample_every = max(args.requests // 50, 1)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, baseline, mismatches
        while sent < args.requests:
            sent += 1
            number = sent
            kind, request, expected = request_mix(rng, pool)
            kinds[kind] += 1
            try:
                response = await client.request(**request)
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            statuses[status] += 1
            if status != str(expected):
                mismatches += 1
                if len(unexpected) < 20:
                    unexpected.append(f"#{number} {kind}: {status}")
            if number == args.warmup:
                baseline = rss_mib(pid)
            if number % sample_every == 0:
                samples.append((number, rss_mib(pid)))

    limits = httpx.Limits(max_connections=args.concurrency)
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60, headers=headers) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
    duration = time.perf_counter() - started
    final = rss_mib(pid)
    baseline = baseline or samples[0][1]
    return {
        "requests": sum(statuses.values()),
        "concurrency": args.concurrency,
        "duration_s": round(duration, 1),
        "requests_per_s": round(sum(statuses.values()) / duration, 1),
        "statuses": dict(statuses),
        "kinds": dict(kinds),
        "unexpected": mismatches,
        "unexpected_examples": unexpected,
        "rss_after_warmup_mib": round(baseline, 1),
        "rss_final_mib": round(final, 1),
        "rss_max_mib": round(max([final, *(rss for _, rss in samples)]), 1),
        "rss_drift_pct": round(100 * (final - baseline) / baseline, 2),
        "rss_samples_mib": [round(rss, 1) for _, rss in samples],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=None, help="default: 10 %% of --requests")
    parser.add_argument("--max-drift-pct", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="an already running server (then --pid is required)")
    parser.add_argument("--pid", type=int, help="its process id, for resident memory")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    args.warmup = args.warmup or max(args.requests // 10, 1)
    process = None
    if args.url:
        url, pid = args.url, args.pid
    else:
        process, url = start_server({})
        pid = process.pid
    try:
        summary = asyncio.run(soak(url, pid, args))
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            summary_rc = process.wait(timeout=30)
    if process is not None:
        summary["server_exit_code"] = summary_rc
    print(json.dumps(summary, indent=1))
    failed = summary["unexpected"] or summary["rss_drift_pct"] > args.max_drift_pct
    return 1 if failed or summary.get("server_exit_code", 0) != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
