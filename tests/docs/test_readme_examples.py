"""The API examples of the README and docs/api.md upload files that ship with the repository, and a
live server answers them as the pages show (``tests/docs/examples.py`` runs them and rewrites them)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.data import CanvasSet
from tests.docs import examples
from tests.helpers import png_bytes

ROOT = examples.ROOT
README = (ROOT / "README.md").read_text()
API = (ROOT / "docs" / "api.md").read_text()


@pytest.mark.parametrize("page", examples.PAGES, ids=lambda page: page.name)
def test_every_example_answers_as_the_page_shows(page: Path) -> None:
    assert examples.blocks(page), f"{page.name} has no console examples"
    problems = examples.check_page(page)
    assert not problems, (
        "\n\n".join(problems)
        + "\n\nIf the service's answers changed on purpose: .venv/bin/python -m tests.docs.examples"
    )


def test_the_readme_has_one_example_per_endpoint() -> None:
    commands = [example.shell for _, found in examples.blocks(ROOT / "README.md") for example in found]
    for endpoint in ("/predict", "/attention-map", "/models", "/health/live", "/health/ready", "/metrics"):
        assert any(f"localhost:8000{endpoint}" in command for command in commands), endpoint


def test_the_api_page_shows_every_endpoint() -> None:
    for endpoint in ("/predict", "/attention-map", "/models", "/health/live", "/health/ready", "/metrics"):
        assert f"localhost:8000{endpoint}" in API, endpoint


def test_the_comparison_tolerates_float_rounding_only() -> None:
    assert examples.same_output(['{"score":0.9056041836738586}'], ['{"score":0.9056041240692139}'])
    assert not examples.same_output(['{"score":0.9056041836738586}'], ['{"score":0.8056041836738586}'])
    assert not examples.same_output(['{"version":"1.1.0"}'], ['{"version":"1.1.1"}'])
    assert not examples.same_output(['{"error": {"code": "x"}}'], ['{"error":{"code":"x"}}'])


def test_what_a_page_shows_of_an_answer() -> None:
    raw = 'HTTP/1.1 415 Unsupported Media Type\r\ncontent-type: application/json\r\n\r\n{"a":1}'
    assert examples.shown(raw) == ["HTTP/1.1 415 Unsupported Media Type", '{"a":1}']
    png = "iVBORw0KGgoAAAANSUhEUgAAADwAAAA8CAAAAAAfAAAA" * 3
    assert examples.shown(f'{{"heatmap":"{png}","grid":[[1,2,3,4,5],[6,7,8,9,10],[11]]}}') == [
        f'{{"heatmap":"{png[:40]}…","grid":[[1,2,3,4,…],[6,7,8,9,…],…]}}'
    ]


def test_every_file_the_examples_upload_ships_with_the_repository() -> None:
    pages = README + API
    uploaded = set(re.findall(r"@(examples/[\w.-]+)", pages)) | set(
        re.findall(r"base64 -w0 (examples/[\w.-]+)", pages)
    )
    assert uploaded == {"examples/digit42.png", "examples/digit903.png"}
    for path in uploaded:
        with Image.open(ROOT / path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (60, 60))


def test_the_examples_are_the_test_canvases_the_api_page_names(canvases: CanvasSet) -> None:
    assert 'fixed_canvases(load_mnist_splits()["test"], 60, seed=0)' in API
    for index in (42, 903):
        shipped = np.asarray(Image.open(ROOT / f"examples/digit{index}.png"))
        np.testing.assert_array_equal(shipped, canvases.images[index].numpy())
        assert (ROOT / f"examples/digit{index}.png").read_bytes() == png_bytes(shipped)


@pytest.mark.anyio
async def test_the_examples_are_classified_as_the_api_page_says(client: httpx.AsyncClient) -> None:
    assert 'digit42 is a "0"' in API
    assert 'digit903 a "9"' in API
    files = [
        ("file", (name, (ROOT / f"examples/{name}").read_bytes(), "image/png"))
        for name in ("digit42.png", "digit903.png")
    ]
    response = await client.post("/predict", params={"top_k": 1}, files=files)
    labels = [result["predictions"][0]["label"] for result in response.json()["results"]]
    assert labels == ["0", "9"]


def test_the_readme_links_only_to_files_that_exist() -> None:
    for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)|src=\"([^\"]+)\"", README):
        path = next(part for part in target if part)
        if not path.startswith(("http://", "https://", "mailto:")):
            assert (ROOT / path).exists(), path
