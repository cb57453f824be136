"""The Open Inference Protocol's REST routes under ``/v2``: server and model metadata, health, infer.

A thin transport: it reads the protocol's wire format (:mod:`.codec`, :mod:`.protocol`) and runs the
query through the same predictor, engine, limits and API keys as ``/predict``. Errors leave as the
protocol's ``{"error": "<message>"}`` with the status our own API gives the same mistake. Health is
open; everything under ``/v2/models`` needs the API key when keys are configured.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.deps import PredictorDep, SettingsDep, require_api_key
from app.errors import GlimpseError, ModelNotReady, PayloadTooLarge
from app.pipeline.predictor import Predictor
from app.pipeline.uploads import check_declared_length
from app.transports.routes.common import json_response
from app.transports.v2 import schemas
from app.transports.v2.codec import HEADER_LENGTH, error_body, header_length, parse_infer_request
from app.transports.v2.inference import infer as run_infer
from app.transports.v2.protocol import Limits, encode_answers, model_metadata, read_query, server_metadata


class UnknownModel(GlimpseError):  # noqa: N818 - named for what happened, as app.errors' are
    status_code, code = 404, "not_found"


class V2Route(APIRoute):
    """Every error of a v2 route, from its dependencies too, as the protocol's ``{"error": "..."}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except GlimpseError as exc:
                return v2_error(exc.status_code, exc.message, exc.headers)
            except RequestValidationError as exc:
                return v2_error(400, "; ".join(str(e.get("msg")) for e in exc.errors()) or "invalid request")

        return route

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A method the route does not take: 405 in the protocol's shape, not the rest of the API's."""
        if self.methods and scope["method"] not in self.methods:
            allowed = ", ".join(sorted(self.methods))
            message = f"{scope['method']} is not allowed on {scope['path']}; use {allowed}"
            await v2_error(405, message, {"Allow": allowed})(scope, receive, send)
            return
        await super().handle(scope, receive, send)


def v2_error(status_code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status_code, headers, media_type="application/json")


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorV2, "description": description}
    for status, description in {
        400: "Malformed request: JSON, tensor shape, datatype or data, binary sizes, unknown input or "
        "output, undecodable image.",
        401: "Missing or wrong API key (only when keys are configured).",
        404: "Unknown model name or version.",
        405: "A method the route does not take.",
        413: "Body, image count or image pixels over the limit.",
        415: "Unsupported image format.",
        422: "Unknown target or kind.",
        503: "Model not ready or queue full; see Retry-After.",
        504: "The request's deadline passed.",
    }.items()
}
health = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], route_class=V2Route)
models = APIRouter(
    prefix="/v2/models",
    tags=["v2 (Open Inference Protocol)"],
    route_class=V2Route,
    dependencies=[Depends(require_api_key)],
)


@health.get("", response_model=schemas.ServerMetadataV2)
async def metadata(request: Request) -> Response:
    """Server metadata: name, version, and the extensions spoken (binary_tensor_data)."""
    return json_response(server_metadata(request.app.version))


@health.get("/health/live", response_model=schemas.LiveV2)
async def live() -> Response:
    """200 while the process serves HTTP."""
    return json_response({"live": True})


@health.get("/health/ready", response_model=schemas.ReadyV2, responses={503: ERRORS[503]})
async def ready(request: Request) -> Response:
    """200 once the model is loaded and warm; 503 before that and while shutting down."""
    state = request.app.state
    if state.draining or not state.ready:
        raise ModelNotReady("the model is not ready", headers={"Retry-After": "1"})
    return json_response({"ready": True})


def check_model(predictor: Predictor, name: str, version: str | None) -> None:
    card = predictor.card
    if name != card.name or version not in (None, card.version):
        asked = f"{name!r}" if version is None else f"{name!r} version {version!r}"
        raise UnknownModel(
            f"unknown model {asked}; this server serves {card.name!r} version {card.version!r}"
        )


MODEL_ERRORS: dict[int | str, dict[str, Any]] = {status: ERRORS[status] for status in (401, 404, 503)}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {200: schemas.INFER_RESPONSES, **ERRORS}


@models.get("/{name}", response_model=schemas.ModelMetadataV2, responses=MODEL_ERRORS)
async def model(predictor: PredictorDep, name: str) -> Response:
    """Model metadata: inputs and outputs with datatypes and shapes; the labels in its parameters."""
    return _metadata(predictor, name, None)


@models.get("/{name}/versions/{version}", response_model=schemas.ModelMetadataV2, responses=MODEL_ERRORS)
async def model_version(predictor: PredictorDep, name: str, version: str) -> Response:
    """Model metadata of one version (the card's version is the only one)."""
    return _metadata(predictor, name, version)


@models.get("/{name}/ready", response_model=schemas.ModelReadyV2, responses=MODEL_ERRORS)
async def model_ready(predictor: PredictorDep, name: str) -> Response:
    """200 once the model is loaded and warm; 503 before that."""
    check_model(predictor, name, None)
    return json_response({"name": name, "ready": True})


@models.get("/{name}/versions/{version}/ready", response_model=schemas.ModelReadyV2, responses=MODEL_ERRORS)
async def model_version_ready(predictor: PredictorDep, name: str, version: str) -> Response:
    """200 once the model is loaded and warm; 503 before that."""
    check_model(predictor, name, version)
    return json_response({"name": name, "ready": True})


@models.post(
    "/{name}/infer",
    response_model=schemas.InferResponseV2,
    openapi_extra=schemas.INFER_REQUEST_BODY,
    responses=INFER_RESPONSES,
)
async def infer(request: Request, predictor: PredictorDep, settings: SettingsDep, name: str) -> Response:
    """Inference on encoded images (`image`) or raw pixels (`pixels`), as JSON or binary tensors."""
    return await _infer(request, predictor, settings, name, None)


@models.post(
    "/{name}/versions/{version}/infer",
    response_model=schemas.InferResponseV2,
    openapi_extra=schemas.INFER_REQUEST_BODY,
    responses=INFER_RESPONSES,
)
async def infer_version(
    request: Request, predictor: PredictorDep, settings: SettingsDep, name: str, version: str
) -> Response:
    """Inference on one version of the model (the card's version is the only one)."""
    return await _infer(request, predictor, settings, name, version)


def _metadata(predictor: Predictor, name: str, version: str | None) -> Response:
    check_model(predictor, name, version)
    return json_response(model_metadata(predictor.card))


async def _infer(
    request: Request, predictor: Predictor, settings: Settings, name: str, version: str | None
) -> Response:
    check_model(predictor, name, version)
    body = await read_body(request, settings.max_body_bytes)
    length = header_length(request.headers.get(HEADER_LENGTH), len(body))
    limits = Limits(
        settings.max_images_per_request, predictor.limits.max_image_pixels, predictor.limits.min_image_size
    )
    query = read_query(parse_infer_request(body, length), predictor.card, limits)
    predictor.engine.metrics.observe_images("/v2/infer", query.count)
    probabilities, heatmaps = await run_infer(predictor, query)
    content, headers = encode_answers(query, predictor.card, probabilities, heatmaps)
    return Response(content, headers=headers)


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes the API's limit."""
    check_declared_length(request.headers.get("content-length"), max_body_bytes)
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_body_bytes:
            raise PayloadTooLarge(f"the body exceeds the limit of {max_body_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
