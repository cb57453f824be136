"""Shared fixtures: test images, an in-process app with its lifespan, and a real uvicorn server.

bfloat16 on the CPU: whether this CPU can run it is decided in one place,
:func:`app.runtime.device.cpu_supports_bfloat16`. Tests marked ``bfloat16`` need it and skip, with
the reason, where it is missing. Tests that take the ``cpu_bfloat16`` fixture depend on the decision
and run twice: on this CPU as it is, and as on a CPU without bfloat16 (the decision forced through
``TEST_CPU_WITHOUT_BFLOAT16`` before any of the test's fixtures start, so in-process apps and the
servers the test starts see it too). Every run thus checks the float32 fallback and the refusal of
an explicit bfloat16, on an AMX Xeon as on an AVX2-only EPYC.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from app.config import Settings
from app.runtime.device import BFLOAT16_UNSUPPORTED, WITHOUT_BFLOAT16_ENV, cpu_supports_bfloat16
from models.data import CanvasSet, fixed_canvases, load_mnist_splits
from tests.helpers import E2E_API_KEY, E2E_LIMITS, png_bytes, started_client
from tests.serving import running

WITHOUT_BFLOAT16 = "cpu-without-bfloat16"
_saved_env: dict[str, str | None] = {}


@pytest.fixture(params=["this-cpu", WITHOUT_BFLOAT16])
def cpu_bfloat16(request: pytest.FixtureRequest) -> bool:
    """Whether the CPU runs bfloat16, as this CPU does and then forced to "no" (module docstring)."""
    return cpu_supports_bfloat16()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("cpu_bfloat16") == WITHOUT_BFLOAT16:
        _saved_env[WITHOUT_BFLOAT16_ENV] = os.environ.get(WITHOUT_BFLOAT16_ENV)
        os.environ[WITHOUT_BFLOAT16_ENV] = "1"
    if item.get_closest_marker("bfloat16") is not None and not cpu_supports_bfloat16():
        pytest.skip(BFLOAT16_UNSUPPORTED.split(";")[0])


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    for name, value in _saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved_env.clear()


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
