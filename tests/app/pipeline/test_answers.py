"""What every answer says about the image: the in-domain verdict and, out of domain, the warning;
and the polarity policy at the API: dark-on-light and transparent drawings read like the canvases."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from app.schemas import AttentionMapResponsePublic, PredictResponsePublic
from models.data import CanvasSet
from models.domain import WARNING
from tests.helpers import png_bytes

pytestmark = pytest.mark.anyio


def _photo() -> bytes:
    """A colour photograph that ships with scikit-learn, as a JPEG a phone would send."""
    from sklearn.datasets import load_sample_image

    buffer = io.BytesIO()
    Image.fromarray(load_sample_image("flower.jpg")).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def test_canvases_are_in_domain_and_carry_no_warning(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes]
) -> None:
    files = [("file", (f"{i}.png", canvas_png(i), "image/png")) for i in range(8)]
    for path, schema in (("/predict", PredictResponsePublic), ("/attention-map", AttentionMapResponsePublic)):
        results = (await client.post(path, files=files)).json()["results"]
        for result in results:
            schema.model_validate(result)
            assert result["domain"]["in_distribution"] is True
            assert 0.5 <= result["domain"]["score"] <= 1.0
            assert result["warning"] is None


async def test_a_photo_is_flagged_with_a_plain_warning(client: httpx.AsyncClient) -> None:
    files = {"file": ("flower.jpg", _photo(), "image/jpeg")}
    for path in ("/predict", "/attention-map"):
        answer = (await client.post(path, files=files)).json()
        assert answer["domain"]["in_distribution"] is False
        assert 0.0 <= answer["domain"]["score"] < 0.5
        assert answer["warning"] == WARNING
        assert "unreliable" in answer["warning"]


async def test_noise_and_a_blank_page_are_flagged(client: httpx.AsyncClient) -> None:
    rng = np.random.default_rng(0)
    for image in (rng.integers(0, 256, (80, 80), dtype=np.uint8), np.full((80, 80), 255, np.uint8)):
        answer = (
            await client.post("/predict", files={"file": ("x.png", png_bytes(image), "image/png")})
        ).json()
        assert answer["domain"]["in_distribution"] is False, answer["domain"]


async def test_dark_strokes_on_white_and_on_transparency_read_like_the_canvas(
    client: httpx.AsyncClient, canvases: CanvasSet
) -> None:
    for index in range(6):
        canvas = canvases.images[index].numpy()
        transparent = np.zeros((*canvas.shape, 4), np.uint8)
        transparent[..., 3] = canvas  # black strokes, opaque where the digit is
        variants = [
            png_bytes(canvas),
            png_bytes(255 - canvas),
            png_bytes(Image.fromarray(transparent, "RGBA")),
        ]
        answers = [
            (await client.post("/predict", files={"file": ("d.png", data, "image/png")})).json()
            for data in variants
        ]
        labels = {answer["predictions"][0]["label"] for answer in answers}
        assert labels == {str(int(canvases.labels[index]))}, answers
        assert all(answer["domain"]["in_distribution"] for answer in answers)


async def test_models_reports_the_polarity_and_the_calibration(client: httpx.AsyncClient) -> None:
    info = (await client.get("/models")).json()
    assert info["input"]["polarity"] == "light_on_dark"
    assert info["domain"]["warning"] == WARNING
    assert "validation" in info["domain"]["calibration"]["threshold_rule"]
    assert "sha256" not in info["domain"]
