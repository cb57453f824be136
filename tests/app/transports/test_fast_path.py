"""The raw-ASGI hot path answers exactly as the FastAPI routes do, and hands them whatever it doesn't take."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from models.attention_net import upsample_to_input as model_upsample
from models.checkpoint import Preprocessing
from models.preprocessing import to_8bit, to_model_input
from tests.helpers import b64

pytestmark = pytest.mark.anyio  # the sync tests below are unaffected
MAP_PARAMS: dict[str, Any] = {"top_k": 3, "overlay": "true", "include_grid": "1", "kind": "evidence"}


@pytest.mark.parametrize(("path", "params"), [("/predict", {"top_k": 3}), ("/attention-map", MAP_PARAMS)])
async def test_hot_path_equals_the_route(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes], path: str, params: dict[str, Any]
) -> None:
    image = canvas_png(7)
    hot = await client.post(path, params=params, files={"file": ("d.png", image, "image/png")})
    routed = await client.post(path, params=params, json={"image": b64(image)})  # JSON: always the route
    assert hot.status_code == routed.status_code == 200
    assert hot.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert hot.json() == routed.json()


async def test_unusual_parameters_go_to_the_route(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes]
) -> None:
    files = {"file": ("d.png", canvas_png(3), "image/png")}
    plain = await client.post("/predict", params={"top_k": 2}, files=files)
    signed = await client.post("/predict", params={"top_k": "+2"}, files=files)
    assert signed.json() == plain.json()
    wrong = await client.post("/attention-map", params={"kind": "gradcam"}, files=files)
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (422, "invalid_parameter")


@pytest.mark.parametrize("top_k", ["0", "00", "11", "99999999999999999999999", "9" * 5000])
@pytest.mark.parametrize("path", ["/predict", "/attention-map"])
async def test_a_top_k_out_of_range_is_worded_alike_on_both_paths(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes], path: str, top_k: str
) -> None:
    image = canvas_png(7)
    hot = await client.post(path, params={"top_k": top_k}, files={"file": ("d.png", image, "image/png")})
    routed = await client.post(path, params={"top_k": top_k}, json={"image": b64(image)})
    assert hot.status_code == routed.status_code == 422
    assert hot.json() == routed.json()
    assert hot.json()["error"]["code"] == "invalid_parameter"
    assert "top_k" in hot.json()["error"]["message"]


async def test_hot_path_requests_are_counted_once_in_the_metrics(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes]
) -> None:
    image = ("d.png", canvas_png(1), "image/png")
    await client.post("/predict", files={"file": image})  # hot path, 200
    await client.post("/attention-map", files={"file": image})  # hot path, 200
    await client.post("/predict", files={"file": ("d.png", b"not an image", "image/png")})  # hot path, 415
    await client.post("/predict", files={"other": image})  # read by the hot path, replayed: the route's 400
    text = (await client.get("/metrics")).text
    for route, status in [("/predict", 200), ("/attention-map", 200), ("/predict", 415), ("/predict", 400)]:
        assert f'glimpse_requests_total{{method="POST",route="{route}",status="{status}"}} 1.0' in text
    assert 'glimpse_request_duration_seconds_count{route="/predict"} 3.0' in text
    assert 'glimpse_request_duration_seconds_count{route="/attention-map"} 1.0' in text


async def test_bodies_the_simple_parser_refuses_are_replayed(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", files={"other": ("d.png", b"x", "image/png")})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_request")
    response = await client.post("/predict", data={"file": "not a file"}, files={"x": ("a", b"b")})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_request")


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
