"""The README's API examples upload files that ship with the repository, and answer as it says."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.data import CanvasSet
from tests.helpers import png_bytes

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

pytestmark = pytest.mark.anyio


def test_every_file_the_examples_upload_ships_with_the_repository() -> None:
    uploaded = set(re.findall(r"@(examples/[\w.-]+)", README)) | set(
        re.findall(r"base64 -w0 (examples/[\w.-]+)", README)
    )
    assert uploaded == {"examples/digit42.png", "examples/digit903.png"}
    for path in uploaded:
        with Image.open(ROOT / path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (60, 60))


def test_the_examples_are_the_test_canvases_the_readme_names(canvases: CanvasSet) -> None:
    # The README: fixed_canvases(load_mnist_splits()["test"], 60, seed=0), indices 42 and 903.
    for index in (42, 903):
        shipped = np.asarray(Image.open(ROOT / f"examples/digit{index}.png"))
        np.testing.assert_array_equal(shipped, canvases.images[index].numpy())
        assert (ROOT / f"examples/digit{index}.png").read_bytes() == png_bytes(shipped)


async def test_the_examples_are_classified_as_the_readme_says(client: httpx.AsyncClient) -> None:
    assert 'digit42 is a "0"' in README
    assert 'digit903 a "9"' in README
    files = [
        ("file", (name, (ROOT / f"examples/{name}").read_bytes(), "image/png"))
        for name in ("digit42.png", "digit903.png")
    ]
    response = await client.post("/predict", params={"top_k": 1}, files=files)
    labels = [result["predictions"][0]["label"] for result in response.json()["results"]]
    assert labels == ["0", "9"]
