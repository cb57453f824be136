"""The request core: every transport's image requests go through :class:`Pipeline`, once each step.

:meth:`Pipeline.respond` serves ``POST /predict`` and ``POST /attention-map`` for the raw-ASGI fast path
and the FastAPI routes alike: authentication, the query, the body and its upload, the inference, the
JSON answer, errors and request metrics. :meth:`Pipeline.infer` is the part below the wire format, which
the Open Inference Protocol transport calls with its own inputs and encodes its own way.

Decoding and PNG encoding run in the decode pool, the forward pass in the engine. Small images (at most
:data:`INLINE_MAX_PIXELS` pixels, in files of at most :data:`INLINE_MAX_BYTES`) are opened, decoded
and rendered on the event loop: for a 60×60 canvas the hop to a pool thread and back costs more CPU than
the work. The byte bound keeps crafted small images (a million empty PNG chunks, JPEG scans or GIF
comment blocks) off the loop, where their parsing would stall every other request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import orjson
from numpy.typing import NDArray
from PIL import Image
from starlette.types import Receive, Scope

from app.engine.engine import InferenceEngine
from app.engine.work import MapRequest, Prediction
from app.errors import (
    DeadlineExceeded,
    GlimpseError,
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
    UnsupportedMediaType,
    error_body,
)
from app.pipeline import answers
from app.pipeline.answers import Domain
from app.pipeline.auth import check_api_key
from app.pipeline.imaging import DecodedImage, convert_image, open_image
from app.pipeline.query import Operation, Query, parse_query
from app.pipeline.uploads import media_type, parse_upload, read_upload
from app.runtime.metrics import Metrics
from models.checkpoint import ModelCard
from models.domain import DomainScorer
from models.maps import render_heatmaps

logger = logging.getLogger("glimpse.pipeline")

T = TypeVar("T")
R = TypeVar("R")
ImageInput = bytes | NDArray[np.uint8]  # an encoded file, or (H, W) / (H, W, C) pixels

INLINE_MAX_PIXELS = 128 * 128
INLINE_MAX_BYTES = 32 * 1024
# A larger body is parsed in the decode pool, and watched for the client going away while its images
# are computed.
INLINE_MAX_BODY_BYTES = 64 * 1024
JSON_HEADERS = [(b"content-type", b"application/json")]
ACCEPTED_MEDIA = (b"multipart/form-data", b"application/json")


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int
    max_images_per_request: int
    max_image_pixels: int
    min_image_size: int
    request_timeout_s: float


@dataclass(slots=True)
class Reply:
    """A finished HTTP answer, for the transport to send."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(slots=True)
class ImageResult:
    """One image's answer below the wire format."""

    decoded: DecodedImage
    prediction: Prediction
    domain: Domain


class ClientGone(Exception):  # noqa: N818 (named for what happened, as the domain errors are)
    """The client disconnected while its request was computed; there is no one to answer."""


class Pipeline:
    def __init__(
        self,
        engine: InferenceEngine,
        card: ModelCard,
        limits: Limits,
        pool: ThreadPoolExecutor,
        metrics: Metrics,
        api_keys: Sequence[str],
        domain: DomainScorer | None = None,
    ) -> None:
        self.engine = engine
        self.domain = domain
        self.card = card
        self.limits = limits
        self.pool = pool
        self.metrics = metrics
        self.labels = card.labels
        self.stride = card.config.feature_stride
        self._keys = tuple(key.encode() for key in api_keys)
        self._label_index = {label: index for index, label in enumerate(card.labels)}
        self._model_ref = {"name": card.name, "version": card.version}

    # -- the JSON and multipart API ------------------------------------------------------------------
    async def respond(self, operation: Operation, scope: Scope, receive: Receive) -> Reply:
        """Answer one ``POST /predict`` or ``/attention-map`` request; counts it in the metrics."""
        started = time.perf_counter()
        try:
            reply = Reply(200, JSON_HEADERS, await self._answer(operation, scope, receive))
        except GlimpseError as exc:
            reply = error_reply(exc)
        except ClientGone:
            reply = Reply(499, JSON_HEADERS, b"")  # nginx's status for it: the transport sends nothing
        except Exception as exc:
            logger.error("unhandled error on POST %s", scope["path"], exc_info=exc)
            reply = Reply(500, JSON_HEADERS, error_body("internal_error", "internal server error"))
        scope["glimpse.counted"] = True  # the metrics middleware leaves it alone
        self.metrics.observe_request(scope["path"], "POST", reply.status, time.perf_counter() - started)
        return reply

    def authenticate(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        check_api_key(self._keys, headers)

    async def _answer(self, operation: Operation, scope: Scope, receive: Receive) -> bytes:
        raw_headers = scope["headers"]
        self.authenticate(raw_headers)
        query = parse_query(scope["query_string"], operation, self.labels)
        headers = dict(raw_headers)
        content_type = headers.get(b"content-type", b"")
        if media_type(content_type) not in ACCEPTED_MEDIA and not media_type(content_type).endswith(b"+json"):
            shown = content_type.decode("latin-1")[:100] or "(none)"
            raise UnsupportedMediaType(
                f"unsupported content type {shown!r}: send multipart/form-data with a 'file' part or "
                "application/json with 'image' or 'images'"
            )
        body = await read_upload(headers, receive, self.limits.max_body_bytes)
        max_images = self.limits.max_images_per_request
        if len(body) <= INLINE_MAX_BODY_BYTES:
            upload = parse_upload(body, content_type, max_images)
        else:  # JSON and base64 of megabytes take tens of milliseconds: not on the event loop
            loop = asyncio.get_running_loop()
            upload = await loop.run_in_executor(self.pool, parse_upload, body, content_type, max_images)
        self.metrics.observe_images(scope["path"], len(upload.images))
        work = self._render(upload.images, query, operation)
        payloads = await (work if len(body) <= INLINE_MAX_BODY_BYTES else _unless_gone(work, receive))
        return orjson.dumps({"results": payloads} if upload.several else payloads[0])

    async def _render(self, images: list[bytes], query: Query, operation: Operation) -> list[dict[str, Any]]:
        if operation == "predict":
            results = await self.infer(images, query, operation)
            return [answers.prediction(self._model_ref, self.labels, r.prediction, r.domain) for r in results]
        async with _deadline(self.limits.request_timeout_s):
            results = await self.infer(images, query, operation, keep_rgb=query.overlay)
            render = partial(answers.attention_map, self._model_ref, self.labels, self.stride, query)
            return await self._per_image(
                lambda result: render(result.decoded, result.prediction, result.domain),
                results,
                [r.decoded.width * r.decoded.height for r in results],
            )

    # -- below the wire format ---------------------------------------------------------------------------
    async def infer(
        self, images: Sequence[ImageInput], query: Query, operation: Operation, keep_rgb: bool = False
    ) -> list[ImageResult]:
        """Decode, batch through the engine and, for maps, render each heat image.

        Raises:
            GlimpseError: Any client or capacity error, worded for the client; with several images an
                image's error names it.
        """
        map_request = None
        if operation == "attention-map":
            target = None if query.target is None else self._label_index[query.target]
            map_request = MapRequest(query.kind, target)
        async with _deadline(self.limits.request_timeout_s) as deadline:
            count = len(images)
            small_files = all(_size(image) <= INLINE_MAX_BYTES for image in images)
            opened = await self._per_item(
                lambda item: _for_image(item[0], count, self._open, item[1]),
                list(enumerate(images)),
                inline=small_files,
            )
            pixel_counts = [image.width * image.height for image in opened]
            # Admitted by the headers' sizes: a request too large for the budget or its deadline is
            # refused before any decoding, and its pixels count until it has its predictions.
            with self.engine.admit(pixel_counts, deadline) as admission:
                convert = partial(convert_image, spec=self.card.preprocessing, keep_rgb=keep_rgb)
                decoded = await self._per_image(
                    lambda item: _for_image(item[0], count, convert, item[1]),
                    list(enumerate(opened)),
                    pixel_counts,
                )
                predictions = await admission.predict([d.pixels for d in decoded], query.top_k, map_request)
            domains = self._domains(decoded, predictions)
            results = [ImageResult(*r) for r in zip(decoded, predictions, domains, strict=True)]
            if map_request is not None and any(r.prediction.heat is None for r in results):
                await self._in_pool(self._render_heat, results)
        return results

    def _domains(self, decoded: list[DecodedImage], predictions: list[Prediction]) -> list[Domain]:
        """Each image's verdict: the forward pass's in-domain score, lowered for a colourful upload."""
        if self.domain is None:
            return [Domain(True, 1.0) for _ in predictions]
        scores = [
            self.domain.with_colour_score(p.domain_score, d.colourful)
            for d, p in zip(decoded, predictions, strict=True)
        ]
        return [Domain(score >= 0.5, score) for score in scores]

    def _open(self, image: ImageInput) -> Image.Image:
        limits = self.limits
        if isinstance(image, bytes):
            return open_image(image, limits.max_image_pixels, limits.min_image_size)
        return _from_pixels(image, limits.max_image_pixels, limits.min_image_size)

    def _render_heat(self, result: ImageResult) -> None:
        """The heat image of a map the engine left to the pool (a large image)."""
        prediction, decoded = result.prediction, result.decoded
        if prediction.heat is None and prediction.grid is not None:
            grid = prediction.grid.unsqueeze(0)
            prediction.heat = render_heatmaps(grid, decoded.height, decoded.width, self.stride)[0].numpy()

    async def _per_image(self, function: Callable[[T], R], items: list[T], pixels: list[int]) -> list[R]:
        """``function`` over a request's images: inline when each has at most INLINE_MAX_PIXELS."""
        return await self._per_item(function, items, inline=all(n <= INLINE_MAX_PIXELS for n in pixels))

    async def _per_item(self, function: Callable[[T], R], items: list[T], inline: bool) -> list[R]:
        if inline:
            return [function(item) for item in items]
        return await self._in_pool(function, items)

    async def _in_pool(self, function: Callable[[T], R], items: Sequence[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        if len(items) == 1:
            return [await loop.run_in_executor(self.pool, function, items[0])]
        return list(
            await asyncio.gather(*(loop.run_in_executor(self.pool, function, item) for item in items))
        )


def error_reply(error: GlimpseError) -> Reply:
    headers = JSON_HEADERS + [
        (name.lower().encode(), value.encode()) for name, value in error.headers.items()
    ]
    return Reply(error.status_code, headers, error_body(error.code, error.message))


class _deadline:  # noqa: N801 (used as ``async with _deadline(s) as deadline``)
    """Bounds a block by the request timeout; yields the deadline and raises 504 past it."""

    def __init__(self, timeout_s: float) -> None:
        self.deadline = time.perf_counter() + timeout_s
        self._timeout = asyncio.timeout(timeout_s)

    async def __aenter__(self) -> float:
        await self._timeout.__aenter__()
        return self.deadline

    async def __aexit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        try:
            await self._timeout.__aexit__(exc_type, exc, traceback)
        except TimeoutError as timeout:
            raise DeadlineExceeded("the request did not finish within its deadline") from timeout


async def _unless_gone(work: Any, receive: Receive) -> list[dict[str, Any]]:
    """Await ``work``; cancel it (its queued images are then dropped) if the client disconnects."""
    task: asyncio.Task[list[dict[str, Any]]] = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientGone
    return task.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _size(image: ImageInput) -> int:
    return len(image) if isinstance(image, bytes) else image.nbytes


def _from_pixels(pixels: NDArray[np.uint8], max_pixels: int, min_size: int) -> Image.Image:
    """A Pillow image of raw (H, W) or (H, W, C) uint8 pixels, C in 1, 3 or 4, with the file limits."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))):
        raise InvalidImage(f"pixels must be (H, W) or (H, W, C) with C = 1, 3 or 4, got {pixels.shape}")
    height, width = pixels.shape[:2]
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}×{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    if min(width, height) < min_size:
        raise ImageTooSmall(f"the image is {width}×{height}; both sides must be at least {min_size} pixels")
    return Image.fromarray(np.ascontiguousarray(pixels))


def _for_image(index: int, count: int, function: Callable[..., R], *args: Any) -> R:
    """``function(*args)`` on one of a request's ``count`` images; with several, an error names it."""
    try:
        return function(*args)
    except GlimpseError as exc:
        if count == 1:
            raise
        raise type(exc)(f"image {index}: {exc.message}", exc.headers) from exc
