"""Helpers the tests share: test constants, image bytes, and an in-process app with its lifespan."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from app.config import Settings
from app.main import create_app

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


async def started_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of an app started (loaded, warm) with ``settings``."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://glimpse.test") as http:
            yield http
