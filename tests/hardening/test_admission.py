"""Cost-aware admission against a real server: large images are refused or bounded before they are
decoded or computed, and a small request right after them is answered.

The attack at full size: eight blank 4096² PNGs (131 kB in all) in one request, or many at once, each
costing seconds of CPU and tens of MB. Here at CI size: the largest image is 512², the in-flight
budget its default (four of them) and the queue 64 images, so that requests of at most 4 × 512² / 64
= 16,384 pixels (the 60×60 canvases) are small: never refused for the budget.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx
import numpy as np

from tests.helpers import png_bytes
from tests.serving import running

SIDE = 512
ENV = {
    "GLIMPSE_MAX_IMAGE_PIXELS": str(SIDE * SIDE),
    "GLIMPSE_MAX_QUEUE_SIZE": "64",
    "GLIMPSE_MAX_IMAGES_PER_REQUEST": "8",
}
BLANK = png_bytes(np.zeros((SIDE, SIDE), dtype=np.uint8))  # a few hundred bytes for 262,144 pixels


def test_a_request_of_eight_largest_blank_images_is_refused_at_once_and_a_small_one_is_answered(
    canvas_png: Callable[[int], bytes],
) -> None:
    files = [("file", (f"{i}.png", BLANK, "image/png")) for i in range(8)]
    with running(ENV) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        big = client.post("/predict", files=files)
        small = client.post("/predict", files={"file": ("c.png", canvas_png(0), "image/png")})
    assert big.status_code == 413
    error = big.json()["error"]
    assert error["code"] == "payload_too_large"
    assert f"{8 * SIDE * SIDE} pixels" in error["message"]
    assert error["message"].endswith("send fewer or smaller images")
    assert small.status_code == 200
    assert small.json()["predictions"]


def test_concurrent_largest_images_are_bounded_and_a_small_request_among_them_is_answered(
    canvas_png: Callable[[int], bytes],
) -> None:
    """Twelve largest images at once, three times the budget: some are refused with 503 and
    Retry-After, the rest answered; a small request sent while they are in flight gets 200."""

    async def attack(url: str) -> tuple[httpx.Response, list[httpx.Response]]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            large = [
                asyncio.create_task(client.post("/predict", files={"file": ("b.png", BLANK, "image/png")}))
                for _ in range(12)
            ]
            await asyncio.sleep(0.2)
            small = await client.post("/predict", files={"file": ("c.png", canvas_png(1), "image/png")})
            return small, await asyncio.gather(*large)

    with running(ENV) as server:
        rss_before = server.rss_kib()
        small, large = asyncio.run(attack(server.url))
        rss_growth_mib = (server.rss_kib() - rss_before) / 1024
        after = httpx.post(
            f"{server.url}/predict", files={"file": ("c.png", canvas_png(2), "image/png")}, timeout=60
        )
    statuses = Counter(response.status_code for response in large)
    print(f"12 concurrent {SIDE}² images: {dict(statuses)}; RSS grew {rss_growth_mib:.0f} MiB")
    assert small.status_code == 200
    assert after.status_code == 200
    assert set(statuses) <= {200, 503}
    assert statuses[503] >= 1  # at most four fit the budget at once
    for response in large:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "overloaded"
        else:
            assert response.json()["predictions"]
