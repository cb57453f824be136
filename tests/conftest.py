"""Shared fixtures: test images, an in-process app with its lifespan, and a real uvicorn server."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import running

from app.config import Settings
from app.main import create_app
from models.data import CanvasSet, fixed_canvases, load_mnist_splits

REPO_ROOT = Path(__file__).resolve().parent.parent
E2E_API_KEY = "e2e-secret-key"
E2E_LIMITS = {"GLIMPSE_MAX_IMAGES_PER_REQUEST": "4", "GLIMPSE_MAX_BODY_BYTES": "300000"}


def png_bytes(array: np.ndarray[Any, Any] | Image.Image, **save: Any) -> bytes:
    image = array if isinstance(array, Image.Image) else Image.fromarray(np.asarray(array))
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


@pytest.fixture(scope="session")
def canvases() -> CanvasSet:
    """Cluttered-MNIST 60×60 test canvases with their digit boxes (x0, y0, x1, y1), x1/y1 exclusive."""
    return fixed_canvases(load_mnist_splits()["test"], 60, seed=0)


@pytest.fixture(scope="session")
def canvas_png(canvases: CanvasSet) -> Callable[[int], bytes]:
    return lambda index: png_bytes(canvases.images[index].numpy())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings() -> Settings:
    """Defaults from the code, not from the developer's environment."""
    return Settings(_env_file=None)


async def started_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of an app started (loaded, warm) with ``settings``."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://glimpse.test") as http:
            yield http


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of a started app with the default settings."""
    async for http in started_client(settings):
        yield http


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """A real uvicorn server on a free loopback port, with an API key and small limits; yields its URL."""
    with running({"GLIMPSE_API_KEYS": E2E_API_KEY, **E2E_LIMITS}) as started:
        yield started.url
