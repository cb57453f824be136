"""The predictor: decode in the thread pool, infer through the batching engine, render the answers.

It turns image bytes into the response dicts of ``/predict`` and ``/attention-map`` (shaped like the
``…Public`` schemas). Decoding and PNG encoding run in the decode pool; the forward pass and the map
upsampling run in the engine's inference thread, on the model's device (the predictor upsamples only
maps above the engine's size limit, in the pool); the event loop reads headers and coordinates. Requests whose
images are all small (at most :data:`INLINE_MAX_PIXELS`) are decoded and rendered on the event loop
itself: for a 60×60 canvas the hop to a pool thread and back costs more CPU than the decoding does.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from app.engine.engine import InferenceEngine
from app.engine.forward import MapKind, MapRequest, Prediction
from app.errors import DeadlineExceeded, GlimpseError, InvalidParameter
from app.pipeline.imaging import (
    Colormap,
    DecodedImage,
    convert_image,
    encode_png,
    open_image,
    overlay,
)
from models.checkpoint import ModelCard
from models.maps import render_heatmaps

T = TypeVar("T")
R = TypeVar("R")

# Images this small are decoded and rendered on the event loop: a pool round trip (two thread hand-offs
# and the GIL changing hands) would cost about as much as the work itself.
INLINE_MAX_PIXELS = 128 * 128


@dataclass(frozen=True, slots=True)
class MapOptions:
    """What ``/attention-map`` should draw."""

    kind: MapKind
    target: int | None
    colormap: Colormap | None  # None: no overlay
    include_grid: bool


@dataclass(frozen=True, slots=True)
class Limits:
    max_image_pixels: int
    min_image_size: int
    request_timeout_s: float


class Predictor:
    def __init__(
        self, engine: InferenceEngine, card: ModelCard, limits: Limits, pool: ThreadPoolExecutor
    ) -> None:
        self.engine = engine
        self.card = card
        self.limits = limits
        self.pool = pool
        self.model_ref = {"name": card.name, "version": card.version}
        self.stride = card.config.feature_stride
        self._label_index = {label: index for index, label in enumerate(card.labels)}

    # -- parameters --------------------------------------------------------------------------------
    def check_top_k(self, top_k: int) -> None:
        if not 1 <= top_k <= len(self.card.labels):
            raise InvalidParameter(f"top_k must be between 1 and {len(self.card.labels)}, got {top_k}")

    def target_index(self, label: str | None) -> int | None:
        if label is None:
            return None
        if label not in self._label_index:
            raise InvalidParameter(f"unknown target {label!r}; the labels are {self.card.labels}")
        return self._label_index[label]

    # -- the two operations ------------------------------------------------------------------------
    async def predict(self, images: list[bytes], top_k: int) -> list[dict[str, Any]]:
        """Top-k class probabilities for each image."""
        self.check_top_k(top_k)
        async with self._deadline() as deadline:
            _, predictions = await self._infer(images, top_k, None, keep_rgb=False, deadline=deadline)
        return [{"model": self.model_ref, "predictions": self.prediction_entries(p)} for p in predictions]

    async def attention_maps(
        self, images: list[bytes], top_k: int, options: MapOptions
    ) -> list[dict[str, Any]]:
        """Top-k predictions plus a heatmap (and optionally an overlay and the raw grid) for each image."""
        self.check_top_k(top_k)
        map_request = MapRequest(options.kind, options.target)
        async with self._deadline() as deadline:
            decoded, predictions = await self._infer(
                images, top_k, map_request, keep_rgb=options.colormap is not None, deadline=deadline
            )
            return await self._map_images(
                lambda pair: self.render_map(pair[0], pair[1], options),
                list(zip(decoded, predictions, strict=True)),
                [image.width * image.height for image in decoded],
            )

    # -- steps -------------------------------------------------------------------------------------
    async def _infer(
        self, images: list[bytes], top_k: int, map_request: MapRequest | None, keep_rgb: bool, deadline: float
    ) -> tuple[list[DecodedImage], list[Prediction]]:
        count = len(images)
        opened = [
            _for_image(
                index, count, open_image, data, self.limits.max_image_pixels, self.limits.min_image_size
            )
            for index, data in enumerate(images)
        ]
        pixel_counts = [image.width * image.height for image in opened]
        # Admitted by the headers' sizes: a request too large for the budget or its deadline is refused
        # before any decoding, and the pixels it holds count until it has its predictions.
        with self.engine.admit(pixel_counts, deadline) as admission:
            convert = partial(convert_image, spec=self.card.preprocessing, keep_rgb=keep_rgb)
            decoded = await self._map_images(
                lambda item: _for_image(item[0], count, convert, item[1]),
                list(enumerate(opened)),
                pixel_counts,
            )
            predictions = await admission.predict([d.pixels for d in decoded], top_k, map_request)
        return decoded, predictions

    def _deadline(self) -> _Deadline:
        return _Deadline(self.limits.request_timeout_s)

    async def _map_images(self, function: Callable[[T], R], items: list[T], pixels: list[int]) -> list[R]:
        """``function`` over one request's images: on the event loop when every image has at most
        :data:`INLINE_MAX_PIXELS` pixels, otherwise in the decode pool."""
        if all(count <= INLINE_MAX_PIXELS for count in pixels):
            return [function(item) for item in items]
        return await self._in_pool(function, items)

    async def _in_pool(self, function: Callable[[T], R], items: list[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        if len(items) == 1:
            return [await loop.run_in_executor(self.pool, function, items[0])]
        return list(
            await asyncio.gather(*(loop.run_in_executor(self.pool, function, item) for item in items))
        )

    def prediction_entries(self, prediction: Prediction) -> list[dict[str, Any]]:
        """The ``predictions`` list of an answer: label, class index and probability, best first."""
        labels = self.card.labels
        return [
            {"label": labels[index], "index": index, "score": score}
            for index, score in zip(prediction.indices, prediction.scores, strict=True)
        ]

    def render_map(
        self, decoded: DecodedImage, prediction: Prediction, options: MapOptions
    ) -> dict[str, Any]:
        """Encode the engine's heat image (and the overlay) as PNGs; in the decode pool unless small."""
        assert prediction.grid is not None
        assert prediction.target is not None
        grid, heat = prediction.grid, prediction.heat
        if heat is None:  # a large image: the engine left its map to this (pool) thread
            heat = render_heatmaps(grid.unsqueeze(0), decoded.height, decoded.width, self.stride)[0].numpy()
        blended = None
        if options.colormap is not None:
            assert decoded.rgb is not None
            blended = _b64(encode_png(overlay(decoded.rgb, heat, options.colormap)))
        response: dict[str, Any] = {
            "model": self.model_ref,
            "predictions": self.prediction_entries(prediction),
            "target": self.card.labels[prediction.target],
            "kind": options.kind,
            "width": decoded.width,
            "height": decoded.height,
            "heatmap": _b64(encode_png(heat)),
            "overlay": blended,
            "grid_stride": self.stride,
        }
        if options.include_grid:
            response["grid"] = grid.tolist()
        return response


class _Deadline:
    """``async with`` block bounded by the request timeout; yields the deadline and raises 504 past it."""

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


def _for_image(index: int, count: int, function: Callable[..., R], *args: Any) -> R:
    """``function(*args)`` on one of a request's ``count`` images; with several, an image error names it.

    The client sees which image (counted from 0, as the base64 errors count) to fix instead of
    guessing among them.
    """
    try:
        return function(*args)
    except GlimpseError as exc:
        if count == 1:
            raise
        raise type(exc)(f"image {index}: {exc.message}", exc.headers) from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
