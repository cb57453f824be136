"""Overload, graceful shutdown and a quick soak, each against its own real uvicorn process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import httpx
import numpy as np

from app.runtime.memory import TRIM_INTERVAL_S
from tests.helpers import png_bytes
from tests.serving import REPO_ROOT, running

REQUEST_TIMEOUT_S = 10.0


def noise_png(side: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes((rng.random((side, side)) ** 4 * 255).astype(np.uint8))


async def burst(url: str, count: int, image: bytes) -> list[tuple[int, float, dict[str, str], Any]]:
    """``count`` requests at once, each on its own connection: (status, seconds, headers, body)."""
    limits = httpx.Limits(max_connections=count)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one() -> tuple[int, float, dict[str, str], Any]:
            started = time.perf_counter()
            response = await client.post("/predict", files={"file": ("a.png", image, "image/png")})
            return (
                response.status_code,
                time.perf_counter() - started,
                dict(response.headers),
                response.json(),
            )

        return await asyncio.gather(*(one() for _ in range(count)))


def test_burst_far_above_capacity_gets_fast_503s_and_loses_nothing() -> None:
    env = {
        "GLIMPSE_MAX_QUEUE_SIZE": "4",
        "GLIMPSE_MAX_BATCH_SIZE": "2",
        "GLIMPSE_MAX_IMAGES_PER_REQUEST": "4",
        "GLIMPSE_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
    }
    sent = 300
    with running(env) as server:
        answers = asyncio.run(burst(server.url, sent, noise_png(192)))
        ready_after = httpx.get(f"{server.url}/health/ready").status_code
    statuses = Counter(status for status, *_ in answers)
    refused = [(seconds, headers, body) for status, seconds, headers, body in answers if status == 503]
    served = [seconds for status, seconds, *_ in answers if status == 200]
    print(f"burst: sent {sent}, answered {len(answers)}, {dict(statuses)}")
    print(
        f"200 latency max {max(served):.2f} s; 503 latency median {np.median([r[0] for r in refused]):.3f} s"
    )
    assert len(answers) == sent
    assert set(statuses) == {200, 503}
    assert len(refused) > sent // 2  # far above capacity: most are refused …
    assert len(served) >= 4  # … while the queue keeps serving
    assert max(served) < REQUEST_TIMEOUT_S  # every accepted request finished within its deadline
    for seconds, headers, body in refused:
        assert headers["retry-after"] == "1"
        assert body["error"]["code"] == "overloaded"
        assert seconds < REQUEST_TIMEOUT_S
    assert ready_after == 200


def test_sigterm_under_load_drains_in_flight_requests_and_exits_0() -> None:
    drain_s = 1.5
    slow_image = noise_png(1024, seed=1)
    fast_image = noise_png(96, seed=2)
    results: list[tuple[str, int | str, float]] = []
    stop = threading.Event()

    def client_loop(url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                response = client.post("/predict", files={"file": ("a.png", fast_image, "image/png")})
                results.append(("load", response.status_code, time.monotonic()))

    def slow_request(url: str) -> None:
        files = [("file", ("a.png", slow_image, "image/png"))] * 4
        response = httpx.post(f"{url}/attention-map", params={"overlay": "true"}, files=files, timeout=60)
        results.append(("slow", response.status_code, time.monotonic()))

    with running({"GLIMPSE_SHUTDOWN_DRAIN_S": str(drain_s)}) as server:
        workers = [threading.Thread(target=client_loop, args=(server.url,)) for _ in range(4)]
        for worker in workers:
            worker.start()
        time.sleep(0.5)
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        readiness = []
        while time.monotonic() < sigterm_at + drain_s - 0.4:
            probe = httpx.get(f"{server.url}/health/ready", timeout=5)
            readiness.append((probe.status_code, probe.json().get("error", {}).get("message")))
            time.sleep(0.05)
        stop.set()
        # In flight when the drain ends and uvicorn starts shutting down:
        slow = [threading.Thread(target=slow_request, args=(server.url,)) for _ in range(2)]
        for thread in [*slow]:
            thread.start()
        for thread in [*workers, *slow]:
            thread.join(timeout=60)
        exit_code = server.process.wait(timeout=30)
        output = server.output()
    assert readiness
    assert set(readiness) == {(503, "the service is shutting down")}, readiness
    assert all(status == 200 for _, status, _ in results), results
    slow_done = [at for kind, _, at in results if kind == "slow"]
    assert len(slow_done) == 2
    assert max(slow_done) > sigterm_at + drain_s  # they were still running when shutdown began
    assert sum(kind == "load" for kind, _, _ in results) > 10
    assert exit_code == 0, output


async def post_all(url: str, requests: list[list[bytes]], concurrency: int) -> None:
    """POST each list of images to /predict, ``concurrency`` requests at a time; every answer a 200."""
    pending = list(requests)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker() -> None:
            while pending:
                images = pending.pop()
                files = [("file", ("a.png", image, "image/png")) for image in images]
                response = await client.post("/predict", files=files)
                assert response.status_code == 200, response.text

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def test_a_burst_of_big_batches_costs_memory_for_seconds_not_for_good() -> None:
    """The long soak's step in resident memory, provoked: four bursts of 32 images of 256×256 at once.

    glibc keeps what such batches free in its per-thread arenas, for good: +112 MiB here without the
    service's trimmer. The trimmer gives most of it back within seconds while ordinary traffic goes on;
    what stays (docs/reliability.md, Memory) is a thread arena's top, which malloc_trim cannot release.
    """
    small = [[noise_png(side, seed=side)] for side in (28, 60, 96, 128)] * 50
    burst_request = [noise_png(256, seed=3)] * 4
    with running({}) as server:
        asyncio.run(post_all(server.url, small * 2, concurrency=8))  # the steady working set
        before = peak = server.rss_kib()
        for _ in range(4):
            asyncio.run(post_all(server.url, [burst_request] * 8, concurrency=8))
            peak = max(peak, server.rss_kib())
        deadline = time.monotonic() + 2.5 * TRIM_INTERVAL_S
        kept_at_most = 2 * (peak - before) / 3
        while True:
            asyncio.run(post_all(server.url, small, concurrency=8))
            now = server.rss_kib()
            if now - before < kept_at_most or time.monotonic() > deadline:
                break
    print(f"RSS {before / 1024:.1f} MiB, {peak / 1024:.1f} at most in the bursts, {now / 1024:.1f} then")
    assert peak - before > 32 * 1024  # the bursts did raise it
    # Without the trimmer all of the step stays (406 MiB after a 405 MiB peak, twice). With it, runs
    # kept 11-56 % of the step, so the test asks for a third back, not half.
    assert now - before < kept_at_most


def test_quick_soak_has_no_errors_and_flat_memory() -> None:
    """6,000 mixed requests through scripts/soak.py (docs/reliability.md's long run uses 100,000).

    The warm-up is the first 3,000: oneDNN builds its kernels once per new batch shape
    (docs/reliability.md, Memory), and at 1,000 requests it had made only about 80 % of them.
    """
    command = [sys.executable, "scripts/soak.py", "--requests", "6000", "--warmup", "3000"]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    summary = json.loads(completed.stdout)
    print({k: v for k, v in summary.items() if k != "rss_samples_mib"})
    assert summary["requests"] == 6000
    assert summary["unexpected"] == 0, summary["unexpected_examples"]
    assert summary["rss_drift_pct"] < 5.0
    assert summary["server_exit_code"] == 0
    assert completed.returncode == 0
