"""Crafted images and bodies do not freeze the event loop (issue 22, findings 3 and 4).

Each attack of :mod:`bench.attacks`, at the size the review used, is sent to a real uvicorn server
(default limits: 16 MiB bodies, 32 images) while another thread polls ``/health/live``. The attack must
get a clear 4xx in the one error shape, within the request deadline, and every probe must be answered
within :data:`PROBE_MAX_S`. The bound is generous because CI machines are shared: a frozen loop
shows as probes of seconds (``python -m bench.attacks`` measures p50/p99 on a quiet machine;
docs/reliability.md has the figures).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.pipeline.imaging import GIF_MAX_BLOCKS_BEFORE_IMAGE, JPEG_MAX_SCANS, PNG_MAX_CHUNKS_BASE
from bench.attacks import (
    MULTIPART,
    attack_while_probing,
    build,
    gif_with_comments,
    jpeg_with_scans,
    multipart_file,
    png_with_chunks,
)
from tests.serving import Server, running

PROBE_MAX_S = 2.0
ATTACK_MAX_S = 10.0  # the default request deadline: a refusal must come well before it
# attack → (status, error code)
EXPECTED = {
    "png-chunks": (400, "invalid_image"),
    "gif-comments": (400, "invalid_image"),
    "jpeg-scans": (400, "invalid_image"),
    "multipart-fields": (413, "too_many_images"),
    "multipart-bare-lf": (413, "too_many_images"),
    "json-keys": (413, "too_many_images"),
    "json-images": (413, "too_many_images"),
}


@pytest.fixture(scope="module")
def default_server() -> Iterator[Server]:
    """A server with the default limits, as ``python -m app.serve`` starts it."""
    with running({}) as server:
        yield server


@pytest.mark.parametrize("name", list(EXPECTED))
def test_attack_is_refused_while_the_loop_keeps_answering(default_server: Server, name: str) -> None:
    attack = build(name)
    record = attack_while_probing(default_server.url, attack, timeout_s=60)
    status, code = EXPECTED[name]
    assert record["status"] == status, record
    assert f'"code":"{code}"' in str(record["answer"]), record
    assert record["attack_s"] < ATTACK_MAX_S, record
    assert record["probe_failures"] == 0, record
    assert record["live_max_ms"] < PROBE_MAX_S * 1000, record


# Files just inside the bounds, small enough to be opened on the event loop (32 KiB or less): a
# correct answer, quickly.
WITHIN_BOUNDS = {
    "png-chunks": png_with_chunks(PNG_MAX_CHUNKS_BASE - 8),
    "gif-comments": gif_with_comments(GIF_MAX_BLOCKS_BEFORE_IMAGE - 8),
    "jpeg-scans": jpeg_with_scans(JPEG_MAX_SCANS - 16),
}


@pytest.mark.parametrize("name", list(WITHIN_BOUNDS))
def test_image_within_the_bounds_is_answered(default_server: Server, name: str) -> None:
    image = WITHIN_BOUNDS[name]
    assert len(image) <= 32 * 1024
    media = {"png-chunks": "image/png", "gif-comments": "image/gif", "jpeg-scans": "image/jpeg"}[name]
    response = httpx.post(
        f"{default_server.url}/predict",
        content=multipart_file(image, media),
        headers={"content-type": MULTIPART},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 5
