"""The raw-ASGI fast path and the FastAPI routes are two transports over one core: they answer alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from PIL import Image
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.main import create_app
from app.pipeline.uploads import NO_IMAGE
from models.attention_net import upsample_to_input as model_upsample
from models.checkpoint import Preprocessing
from models.preprocessing import to_8bit, to_model_input
from tests.helpers import b64

pytestmark = pytest.mark.anyio  # the sync tests below are unaffected
MAP_PARAMS: dict[str, Any] = {"top_k": 3, "overlay": "true", "include_grid": "1", "kind": "evidence"}


@pytest.fixture
async def routed(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two clients of one started app: through the fast path, and straight to the FastAPI routes."""
    app = create_app(settings)
    stack = FastAPI.build_middleware_stack(app)  # the app's middleware and routes, without the fast path

    async def routes_only(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = app
        await stack(scope, receive, send)

    async with app.router.lifespan_context(app):
        fast = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        slow = httpx.AsyncClient(transport=httpx.ASGITransport(app=routes_only), base_url="http://t")
        async with fast, slow:
            yield fast, slow


def _requests(png: bytes) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(path, query, httpx body arguments): answers and errors of every kind."""
    one = {"files": {"file": ("d.png", png, "image/png")}}
    return [
        ("/predict", {}, one),
        ("/predict", {"top_k": 3}, {"json": {"image": b64(png)}}),
        ("/predict", {}, {"files": [("file", ("a.png", png)), ("file", ("b.png", png))]}),
        ("/attention-map", MAP_PARAMS, one),
        ("/attention-map", {"target": "3", "kind": "attention", "colormap": "viridis"}, one),
        ("/predict", {"top_k": "0"}, one),
        ("/predict", {"top_k": "9" * 5000}, one),
        ("/predict", {"topk": "3"}, one),
        ("/attention-map", {"target": "cat"}, one),
        ("/attention-map", {"kind": "gradcam"}, one),
        ("/predict", {}, {"files": {"file": ("d.png", b"not an image", "image/png")}}),
        ("/predict", {}, {"files": {"other": ("d.png", png, "image/png")}}),
        ("/predict", {}, {"json": {"image": "%%%"}}),
        ("/predict", {}, {"json": {"pictures": [b64(png)]}}),
        ("/predict", {}, {"content": b"{", "headers": {"content-type": "application/json"}}),
        ("/predict", {}, {"content": b"x", "headers": {"content-type": "text/plain"}}),
    ]


async def test_both_transports_answer_byte_for_byte_alike(
    routed: tuple[httpx.AsyncClient, httpx.AsyncClient], canvas_png: Callable[[int], bytes]
) -> None:
    fast, slow = routed
    statuses = set()
    for path, params, body in _requests(canvas_png(7)):
        one = await fast.post(path, params=params, **body)
        other = await slow.post(path, params=params, **body)
        assert (one.status_code, one.content) == (other.status_code, other.content), (path, params)
        assert one.headers["content-type"] == other.headers["content-type"] == "application/json"
        statuses.add(one.status_code)
    assert statuses == {200, 400, 415, 422}


async def test_a_top_k_out_of_range_has_one_wording(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes]
) -> None:
    files = {"file": ("d.png", canvas_png(3), "image/png")}
    for value in ("0", "00", "11", "99999999999999999999999"):
        response = await client.post("/predict", params={"top_k": value}, files=files)
        assert response.status_code == 422
        message = f"top_k must be a whole number from 1 to 10, got '{value}'"
        assert response.json() == {"error": {"code": "invalid_parameter", "message": message}}
    long = await client.post("/predict", params={"top_k": "9" * 5000}, files=files)
    assert (
        long.json()["error"]["message"]
        == f"top_k must be a whole number from 1 to 10, got {'9' * 200!r}… (5000 characters)"
    )


async def test_a_signed_top_k_reads_as_the_number(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes]
) -> None:
    files = {"file": ("d.png", canvas_png(3), "image/png")}
    plain = await client.post("/predict", params={"top_k": 2}, files=files)
    signed = await client.post("/predict", params={"top_k": "+2"}, files=files)
    assert signed.json() == plain.json()


async def test_unknown_and_repeated_parameters_are_refused(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes]
) -> None:
    files = {"file": ("d.png", canvas_png(3), "image/png")}
    unknown = await client.post("/predict", params={"topk": 3}, files=files)
    assert unknown.json()["error"]["message"] == "unknown parameter 'topk'; /predict takes top_k"
    repeated = await client.post("/predict", params=[("top_k", "1"), ("top_k", "2")], files=files)
    assert repeated.json()["error"]["message"] == "top_k is given more than once"
    assert unknown.status_code == repeated.status_code == 422


async def test_requests_are_counted_once_in_the_metrics(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes]
) -> None:
    image = ("d.png", canvas_png(1), "image/png")
    await client.post("/predict", files={"file": image})  # 200
    await client.post("/attention-map", files={"file": image})  # 200
    await client.post("/predict", files={"file": ("d.png", b"not an image", "image/png")})  # 415
    await client.post("/predict", files={"other": image})  # 400
    text = (await client.get("/metrics")).text
    for route, status in [("/predict", 200), ("/attention-map", 200), ("/predict", 415), ("/predict", 400)]:
        assert f'glimpse_requests_total{{method="POST",route="{route}",status="{status}"}} 1.0' in text
    assert 'glimpse_request_duration_seconds_count{route="/predict"} 3.0' in text
    assert 'glimpse_request_duration_seconds_count{route="/attention-map"} 1.0' in text


async def test_malformed_multipart_bodies_are_worded(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", files={"other": ("d.png", b"x", "image/png")})
    assert (response.status_code, response.json()["error"]["message"]) == (400, NO_IMAGE)
    response = await client.post("/predict", data={"file": "not a file"}, files={"x": ("a", b"b")})
    assert response.json()["error"] == {
        "code": "invalid_request",
        "message": "the 'file' part must be a file upload, not a text field",
    }


async def test_hot_path_errors_have_the_one_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", files={"file": ("d.png", b"not an image", "image/png")})
    assert response.status_code == 415
    assert set(response.json()["error"]) == {"code", "message"}
    response = await client.post("/attention-map", params={"target": "cat"}, files={"file": ("d", b"x")})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_parameter")


@pytest.mark.parametrize("color_mode", ["L", "RGB"])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "F"])
def test_preprocessing_matches_the_reference_formula(color_mode: str, mode: str) -> None:
    rng = np.random.default_rng(0)
    spec = Preprocessing()
    if color_mode == "RGB":
        spec = Preprocessing("RGB", (0.48, 0.45, 0.4), (0.23, 0.22, 0.22))
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "RGB": rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
        "RGBA": rng.integers(0, 256, (37, 53, 4), dtype=np.uint8),
        "I;16": rng.integers(0, 65535, (37, 53), dtype=np.uint16),
        "F": rng.random((37, 53), dtype=np.float32),
    }
    image = Image.fromarray(arrays.get(mode, rng.integers(0, 256, (37, 53), dtype=np.uint8)))
    if mode == "P":
        image = image.convert("P")
    converted = np.asarray(to_8bit(image).convert(spec.color_mode), dtype=np.float64) / 255
    if converted.ndim == 2:
        converted = converted[:, :, None]
    reference = (converted - np.asarray(spec.mean)) / np.asarray(spec.std)
    ours = to_model_input(image, spec)
    assert ours.shape == (spec.channels, 37, 53)
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy(), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("grid_size", "image_size"), [((15, 15), (60, 60)), ((1, 7), (3, 27)), ((9, 4), (33, 14))]
)
def test_cached_upsampling_grid_serves_in_and_out_of_inference_mode(
    grid_size: tuple[int, int], image_size: tuple[int, int]
) -> None:
    grid = torch.rand(2, *grid_size)
    outside = model_upsample(grid, *image_size, 4)
    assert outside.shape == (2, *image_size)
    with torch.inference_mode():  # the cached sampling grid is made outside inference mode
        assert torch.equal(model_upsample(grid, *image_size, 4), outside)
