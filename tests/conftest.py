"""Shared fixtures: test images, an in-process app with its lifespan, and a real uvicorn server."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

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
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of a started (loaded, warm) app."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://glimpse.test") as http:
            yield http


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """A real uvicorn server on a free loopback port, with an API key and small limits; yields its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_")}
    env.update({"GLIMPSE_API_KEYS": E2E_API_KEY, "GLIMPSE_LOG_LEVEL": "warning", **E2E_LIMITS})
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    # No access log: nobody reads the pipe while the server runs, and once its 64 kB fill up every
    # write blocks the event loop (the fuzz tests' long URLs did that within a few hundred requests).
    command.append("--no-access-log")
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise RuntimeError(f"uvicorn exited with {process.returncode}:\n{output}")
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("uvicorn did not become ready within 60 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
