"""Shared fixtures: test images, an in-process app with its lifespan, and a real uvicorn server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from app.config import Settings
from models.data import CanvasSet, fixed_canvases, load_mnist_splits
from tests.helpers import E2E_API_KEY, E2E_LIMITS, png_bytes, started_client
from tests.serving import running


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
