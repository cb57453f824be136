"""A v2 query through the predictor's engine: decode (or take the pixels), batch, forward, and the
outputs as arrays — probabilities in class order, heatmaps as the pixels ``/attention-map`` encodes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from app.engine.forward import MapRequest, Prediction
from app.errors import DeadlineExceeded, GlimpseError
from app.pipeline.imaging import DecodedImage, convert_image, open_image, render_heatmaps
from app.pipeline.predictor import INLINE_MAX_PIXELS, Predictor
from app.transports.v2.protocol import Query, check_heatmap_sizes

R = TypeVar("R")


async def infer(
    predictor: Predictor, query: Query
) -> tuple[NDArray[np.float32], list[NDArray[np.uint8]] | None]:
    """Probabilities ``[N, num_classes]`` and, when the query asks for them, one ``[H, W]`` heatmap per
    image, under the request deadline, batched with every other request's images."""
    card, limits = predictor.card, predictor.limits
    map_request = (
        MapRequest(query.kind, predictor.target_index(query.target)) if query.wants_heatmap else None
    )
    timeout_s = limits.request_timeout_s
    deadline = time.perf_counter() + timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            with predictor.engine.expecting(query.count):  # refuses a burst before any decoding
                decoded = await _decode(predictor, query)
            pixels = [image.pixels for image in decoded]
            predictions = await predictor.engine.predict(pixels, len(card.labels), map_request, deadline)
    except TimeoutError:
        raise DeadlineExceeded("the request did not finish within its deadline") from None
    probabilities = np.zeros((len(predictions), len(card.labels)), np.float32)
    for row, prediction in enumerate(predictions):
        probabilities[row, prediction.indices] = prediction.scores
    if map_request is None:
        return probabilities, None
    return probabilities, [_heat(predictor, image, p) for image, p in zip(decoded, predictions, strict=True)]


async def _decode(predictor: Predictor, query: Query) -> list[DecodedImage]:
    limits, spec = predictor.limits, predictor.card.preprocessing
    if query.images is not None:
        count = len(query.images)
        opened: list[Image.Image] = [
            _for_image(i, count, open_image, data, limits.max_image_pixels, limits.min_image_size)
            for i, data in enumerate(query.images)
        ]
    else:
        assert query.pixels is not None
        opened = query.pixels
    check_heatmap_sizes(query, [image.size for image in opened])

    def convert(item: tuple[int, Image.Image]) -> DecodedImage:
        return _for_image(item[0], len(opened), convert_image, item[1], spec)

    items = list(enumerate(opened))
    if all(image.width * image.height <= INLINE_MAX_PIXELS for image in opened):
        return [convert(item) for item in items]  # as the predictor does: a pool hop costs more here
    loop = asyncio.get_running_loop()
    return list(
        await asyncio.gather(*(loop.run_in_executor(predictor.pool, convert, item) for item in items))
    )


def _heat(predictor: Predictor, image: DecodedImage, prediction: Prediction) -> NDArray[np.uint8]:
    if prediction.heat is not None:
        return prediction.heat
    assert prediction.grid is not None  # a large image: the engine left its map to us
    heat = render_heatmaps(prediction.grid.unsqueeze(0), image.height, image.width, predictor.stride)[0]
    return np.asarray(heat.numpy(), np.uint8)


def _for_image(index: int, count: int, function: Callable[..., R], *args: Any) -> R:
    """``function(*args)`` on image ``index`` of ``count``; with several, an error names the image."""
    try:
        return function(*args)
    except GlimpseError as exc:
        if count == 1:
            raise
        raise type(exc)(f"image {index}: {exc.message}", exc.headers) from exc
