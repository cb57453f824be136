"""Typed clients of the Glimpse HTTP API over httpx: :class:`Client` (sync) and :class:`AsyncClient`.

>>> with Client("http://127.0.0.1:8000") as glimpse:
...     result = glimpse.predict("examples/digit42.png")
...     explained = glimpse.attention_map("examples/digit42.png", target="6")

A 503 (the model is still loading, or the queue is full) is retried after the server's Retry-After, a
bounded number of times; every other error is raised at once as :class:`APIError` with the status and
the service's ``{"error": {"code", "message"}}``. No answer at all raises :class:`ServerUnreachable` or
:class:`RequestTimedOut`.
"""

# As the service's errors (app/errors.py), exceptions are named for what happened, without "Error".
# ruff: noqa: N818

from __future__ import annotations

import asyncio
import email.utils
import io
import mimetypes
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from PIL import Image

from glimpse import results
from glimpse.results import AttentionMap, Domain, MapKind, ModelInfo, ModelRef, Prediction, PredictResult

__all__ = [
    "APIError",
    "AsyncClient",
    "AttentionMap",
    "Client",
    "Domain",
    "GlimpseError",
    "ImageInput",
    "ModelInfo",
    "ModelRef",
    "PredictResult",
    "Prediction",
    "RequestTimedOut",
    "RetryPolicy",
    "ServerUnreachable",
]

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "glimpse-client/0.1.0"

# A file path, the file's bytes, or a Pillow image (sent as PNG).
ImageInput = str | os.PathLike[str] | bytes | Image.Image


class GlimpseError(Exception):
    """Base of everything this client raises."""


class APIError(GlimpseError):
    """The server answered with an error status; ``code`` and ``message`` are the service's own."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    @classmethod
    def from_response(cls, response: httpx.Response) -> APIError:
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):  # not the service's shape: a proxy's page, say
            code, message = (
                f"http_{response.status_code}",
                response.text.strip()[:200] or response.reason_phrase,
            )
        return cls(response.status_code, code, message, retry_after_s(response.headers.get("retry-after")))


class ServerUnreachable(GlimpseError):
    """No answer: the server could not be reached, or dropped the connection."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the Glimpse server at {url}: {reason}")
        self.url = url
        self.reason = reason


class RequestTimedOut(GlimpseError):
    """The server did not answer within the client's timeout."""


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """When to retry a 503. Inference requests are idempotent, so resending one is safe."""

    max_retries: int = 3  # retries after the first attempt
    max_wait_s: float = 10.0  # a Retry-After longer than this is not waited for: the error is raised
    backoff_s: float = 0.5  # first wait when the 503 has no Retry-After; doubles on each retry

    def wait_s(self, response: httpx.Response, retries_done: int) -> float | None:
        """Seconds to wait before retrying ``response``, or None to give up."""
        if response.status_code != 503 or retries_done >= self.max_retries:
            return None
        after = retry_after_s(response.headers.get("retry-after"))
        wait = self.backoff_s * 2**retries_done if after is None else after
        return wait if wait <= self.max_wait_s else None


def _image_part(image: ImageInput, position: int) -> tuple[str, tuple[str, bytes, str]]:
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        name, data = f"image{position}.png", buffer.getvalue()
    elif isinstance(image, bytes):
        name, data = f"image{position}", image
    else:
        path = Path(image)
        name, data = path.name, path.read_bytes()
    return "file", (name, data, mimetypes.guess_type(name)[0] or "application/octet-stream")


def _files(images: Sequence[ImageInput]) -> list[tuple[str, tuple[str, bytes, str]]]:
    if not images:
        raise ValueError("no images to send")
    return [_image_part(image, position) for position, image in enumerate(images)]


def _map_params(
    top_k: int, target: str | int | None, kind: MapKind, overlay: bool, colormap: str, include_grid: bool
) -> dict[str, str | int]:
    params: dict[str, str | int] = {"top_k": top_k, "kind": kind, "colormap": colormap}
    params |= {"overlay": str(overlay).lower(), "include_grid": str(include_grid).lower()}
    if target is not None:
        params["target"] = str(target)
    return params


def _results(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return list(payload["results"]) if "results" in payload else [payload]


@contextmanager
def _transport_errors(url: str) -> Iterator[None]:
    """httpx's transport exceptions as this client's own."""
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise ServerUnreachable(url, "the connection timed out") from exc
    except httpx.TimeoutException as exc:
        raise RequestTimedOut(f"no answer from {url} within the timeout ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:  # refused, reset, name not resolved, broken protocol
        raise ServerUnreachable(url, _reason(exc)) from exc


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return "connection refused" if "refused" in text.lower() else text


class _Base:
    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        timeout_s: float | httpx.Timeout,
        retry: RetryPolicy | None,
    ) -> None:
        self.url = (url or os.environ.get("GLIMPSE_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("GLIMPSE_API_KEY")
        self.headers = {"User-Agent": USER_AGENT} | ({"X-API-Key": api_key} if api_key else {})
        self.timeout = timeout_s if isinstance(timeout_s, httpx.Timeout) else httpx.Timeout(timeout_s)
        self.retry = retry or RetryPolicy()


class Client(_Base):
    """A synchronous client; use it as a context manager, or call :meth:`close`.

    ``url`` and ``api_key`` default to the GLIMPSE_URL and GLIMPSE_API_KEY environment variables, then
    to http://127.0.0.1:8000 and no key. ``timeout_s`` bounds each attempt, not the retries together.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout_s, retry)
        self._http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    def predict(self, image: ImageInput, *, top_k: int = 5) -> PredictResult:
        """The ``top_k`` classes of one image, highest score first."""
        return self.predict_many([image], top_k=top_k)[0]

    def predict_many(self, images: Sequence[ImageInput], *, top_k: int = 5) -> list[PredictResult]:
        """Several images in one request (up to the server's GLIMPSE_MAX_IMAGES_PER_REQUEST), in order."""
        payload = self._request("POST", "/predict", params={"top_k": top_k}, files=_files(images))
        return [results.predict_result(item) for item in _results(payload)]

    def attention_map(
        self,
        image: ImageInput,
        *,
        target: str | int | None = None,
        kind: MapKind = "evidence",
        overlay: bool = True,
        colormap: str = "turbo",
        top_k: int = 5,
        include_grid: bool = False,
    ) -> AttentionMap:
        """Predictions plus the heatmap (and overlay) of the evidence for ``target`` (default: top class)."""
        params = _map_params(top_k, target, kind, overlay, colormap, include_grid)
        payload = self._request("POST", "/attention-map", params=params, files=_files([image]))
        return results.attention_map(_results(payload)[0])

    def models(self) -> ModelInfo:
        """The served model's card: name, version, labels, input specification, evaluation."""
        return results.model_info(self._request("GET", "/models"))

    def health(self) -> bool:
        """True when the server is ready to answer; False while it loads or drains (no retries)."""
        with _transport_errors(self.url):
            response = self._http.get("/health/ready")
        if response.status_code in (200, 503):
            return response.status_code == 200
        raise APIError.from_response(response)

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        retries = 0
        while True:
            with _transport_errors(self.url):
                response = self._http.request(method, path, **kwargs)
            if response.is_success:
                payload: dict[str, Any] = response.json()
                return payload
            wait = self.retry.wait_s(response, retries)
            if wait is None:
                raise APIError.from_response(response)
            time.sleep(wait)
            retries += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: the same methods, awaited; ``async with`` closes it."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout_s, retry)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    async def predict(self, image: ImageInput, *, top_k: int = 5) -> PredictResult:
        """The ``top_k`` classes of one image, highest score first."""
        return (await self.predict_many([image], top_k=top_k))[0]

    async def predict_many(self, images: Sequence[ImageInput], *, top_k: int = 5) -> list[PredictResult]:
        """Several images in one request (up to the server's GLIMPSE_MAX_IMAGES_PER_REQUEST), in order."""
        payload = await self._request("POST", "/predict", params={"top_k": top_k}, files=_files(images))
        return [results.predict_result(item) for item in _results(payload)]

    async def attention_map(
        self,
        image: ImageInput,
        *,
        target: str | int | None = None,
        kind: MapKind = "evidence",
        overlay: bool = True,
        colormap: str = "turbo",
        top_k: int = 5,
        include_grid: bool = False,
    ) -> AttentionMap:
        """Predictions plus the heatmap (and overlay) of the evidence for ``target`` (default: top class)."""
        params = _map_params(top_k, target, kind, overlay, colormap, include_grid)
        payload = await self._request("POST", "/attention-map", params=params, files=_files([image]))
        return results.attention_map(_results(payload)[0])

    async def models(self) -> ModelInfo:
        """The served model's card: name, version, labels, input specification, evaluation."""
        return results.model_info(await self._request("GET", "/models"))

    async def health(self) -> bool:
        """True when the server is ready to answer; False while it loads or drains (no retries)."""
        with _transport_errors(self.url):
            response = await self._http.get("/health/ready")
        if response.status_code in (200, 503):
            return response.status_code == 200
        raise APIError.from_response(response)

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        retries = 0
        while True:
            with _transport_errors(self.url):
                response = await self._http.request(method, path, **kwargs)
            if response.is_success:
                payload: dict[str, Any] = response.json()
                return payload
            wait = self.retry.wait_s(response, retries)
            if wait is None:
                raise APIError.from_response(response)
            await asyncio.sleep(wait)
            retries += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()
