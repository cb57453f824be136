"""``POST /v2/models/{name}[/versions/{version}]/infer``, once for both ways in: the raw-ASGI fast path
(:mod:`app.transports.fast_path`, outside FastAPI's layers, as ``/predict`` is served) and the FastAPI
route (:mod:`.routes`, which also documents it). Body → codec → the request core → codec → reply."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from starlette.types import Receive, Scope

from app.errors import GlimpseError
from app.pipeline.core import Pipeline, Reply
from app.pipeline.uploads import read_upload
from app.transports.v2.codec import HEADER_LENGTH, error_body, header_length, parse_infer_request
from app.transports.v2.protocol import Limits, V2Query, check_heatmap_sizes, encode_answers, read_query
from models.checkpoint import ModelCard

logger = logging.getLogger("glimpse.v2")

INFER_ROUTE = "/v2/models/{name}/infer"  # the metrics' route label for both infer paths
_JSON = [(b"content-type", b"application/json")]


class UnknownModel(GlimpseError):  # noqa: N818 - named for what happened, as app.errors' are
    status_code, code = 404, "not_found"


def infer_path(path: str) -> tuple[str, str | None] | None:
    """The model name and version of an infer path, or None when ``path`` is not one."""
    parts = path.split("/")
    if len(parts) == 5 and parts[:3] == ["", "v2", "models"] and parts[4] == "infer":
        return parts[3], None
    if (
        len(parts) == 7
        and parts[:3] == ["", "v2", "models"]
        and parts[4] == "versions"
        and parts[6] == "infer"
    ):
        return parts[3], parts[5]
    return None


def check_model(card: ModelCard, name: str, version: str | None) -> None:
    if name != card.name or version not in (None, card.version):
        asked = f"{name!r}" if version is None else f"{name!r} version {version!r}"
        raise UnknownModel(
            f"unknown model {asked}; this server serves {card.name!r} version {card.version!r}"
        )


async def respond(
    pipeline: Pipeline, scope: Scope, receive: Receive, name: str, version: str | None
) -> Reply:
    """The whole answer of the fast path: authentication, the inference, errors, request metrics."""
    started = time.perf_counter()
    try:
        pipeline.authenticate(scope["headers"])
        body, headers = await infer(pipeline, name, version, scope["headers"], receive)
        reply = Reply(200, headers, body)
    except GlimpseError as exc:
        reply = error_reply(exc)
    except Exception as exc:
        logger.error("unhandled error on POST %s", scope["path"], exc_info=exc)
        reply = Reply(500, _JSON, error_body("internal server error"))
    scope["glimpse.counted"] = True  # the metrics middleware leaves it alone
    pipeline.metrics.observe_request(INFER_ROUTE, "POST", reply.status, time.perf_counter() - started)
    return reply


def error_reply(error: GlimpseError) -> Reply:
    """The protocol's ``{"error": "<message>"}`` with the status our API gives the same mistake."""
    extra = [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    return Reply(error.status_code, _JSON + extra, error_body(error.message))


async def infer(
    pipeline: Pipeline,
    name: str,
    version: str | None,
    headers: Sequence[tuple[bytes, bytes]],
    receive: Receive,
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Read, check, run and encode one infer request (already authenticated); returns the body and its
    headers. Raises the domain errors, worded for the client."""
    check_model(pipeline.card, name, version)
    limits = pipeline.limits
    by_name = dict(headers)
    body = await read_upload(by_name, receive, limits.max_body_bytes)
    declared = by_name.get(HEADER_LENGTH.encode())
    length = header_length(None if declared is None else declared.decode("latin-1"), len(body))
    numbers = Limits(limits.max_images_per_request, limits.max_image_pixels, limits.min_image_size)
    query = read_query(parse_infer_request(body, length), pipeline.card, numbers)
    pipeline.metrics.observe_images(INFER_ROUTE, len(query.images))
    probabilities, heatmaps = await answers(pipeline, query)
    content, response_headers = encode_answers(query, pipeline.card, probabilities, heatmaps)
    return content, [(key.encode(), value.encode()) for key, value in response_headers.items()]


async def answers(
    pipeline: Pipeline, query: V2Query
) -> tuple[NDArray[np.float32], list[NDArray[np.uint8]] | None]:
    """The outputs as arrays: probabilities ``[N, classes]`` in class order, and the heat images
    ``/attention-map`` encodes as PNGs when the heatmap is asked for."""
    results = await pipeline.infer(query.images, query.query, query.operation)
    probabilities = np.zeros((len(results), len(pipeline.card.labels)), np.float32)
    for row, result in enumerate(results):
        probabilities[row, result.prediction.indices] = result.prediction.scores
    if not query.wants_heatmap:
        return probabilities, None
    check_heatmap_sizes(query, [(r.decoded.width, r.decoded.height) for r in results])
    heatmaps = [result.prediction.heat for result in results]
    assert all(heat is not None for heat in heatmaps)  # the core renders every map it was asked for
    return probabilities, [heat for heat in heatmaps if heat is not None]
