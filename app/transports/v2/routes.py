"""The Open Inference Protocol's REST routes under ``/v2``: server and model metadata, health, infer.

A thin transport: it reads the protocol's wire format (:mod:`.codec`, :mod:`.protocol`) and runs the
query through the request core (:meth:`app.pipeline.core.Pipeline.infer`) with the same engine, limits,
query rules and API keys as ``/predict``. Errors leave as the
protocol's ``{"error": "<message>"}`` with the status our own API gives the same mistake. Health is
open; everything under ``/v2/models`` needs the API key when keys are configured.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.deps import PipelineDep, StateDep, require_api_key
from app.errors import GlimpseError, ModelNotReady
from app.pipeline.core import Pipeline
from app.transports.v2 import infer, schemas
from app.transports.v2.codec import error_body
from app.transports.v2.infer import check_model
from app.transports.v2.protocol import model_metadata, server_metadata
from models.checkpoint import ModelCard


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


def complete_openapi(schema: dict[str, Any], card: ModelCard) -> None:
    """The served model's name and version as the only values of the ``{name}`` and ``{version}`` path
    parameters, so that the page (and schemathesis) show the paths that answer."""
    values = {"name": card.name, "version": card.version}
    for path, methods in schema["paths"].items():
        if not path.startswith("/v2/models/"):
            continue
        for operation in methods.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in values:
                    parameter["schema"] = {**parameter["schema"], "enum": [values[parameter["name"]]]}


def json_response(payload: Any) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


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
health = APIRouter(prefix="/v2", tags=["v2"], route_class=V2Route)
models = APIRouter(
    prefix="/v2/models",
    tags=["v2 models"],
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
async def ready(state: StateDep) -> Response:
    """200 once the model is loaded and warm in every worker; 503 before that and while shutting down."""
    reason = state.not_ready_reason()
    if reason is not None:
        raise ModelNotReady(reason, headers={"Retry-After": "1"})
    return json_response({"ready": True})


MODEL_ERRORS: dict[int | str, dict[str, Any]] = {status: ERRORS[status] for status in (401, 404, 503)}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {200: schemas.INFER_RESPONSES, **ERRORS}


@models.get("/{name}", response_model=schemas.ModelMetadataV2, responses=MODEL_ERRORS)
async def model(pipeline: PipelineDep, name: str) -> Response:
    """Model metadata: inputs and outputs with datatypes and shapes; the labels in its parameters."""
    return _metadata(pipeline, name, None)


@models.get("/{name}/versions/{version}", response_model=schemas.ModelMetadataV2, responses=MODEL_ERRORS)
async def model_version(pipeline: PipelineDep, name: str, version: str) -> Response:
    """Model metadata of one version (the card's version is the only one)."""
    return _metadata(pipeline, name, version)


@models.get("/{name}/ready", response_model=schemas.ModelReadyV2, responses=MODEL_ERRORS)
async def model_ready(pipeline: PipelineDep, name: str) -> Response:
    """200 once the model is loaded and warm; 503 before that."""
    check_model(pipeline.card, name, None)
    return json_response({"name": name, "ready": True})


@models.get("/{name}/versions/{version}/ready", response_model=schemas.ModelReadyV2, responses=MODEL_ERRORS)
async def model_version_ready(pipeline: PipelineDep, name: str, version: str) -> Response:
    """200 once the model is loaded and warm; 503 before that."""
    check_model(pipeline.card, name, version)
    return json_response({"name": name, "ready": True})


@models.post(
    "/{name}/infer",
    response_model=schemas.InferResponseV2,
    openapi_extra=schemas.INFER_REQUEST_BODY,
    responses=INFER_RESPONSES,
)
async def infer_latest(request: Request, pipeline: PipelineDep, name: str) -> Response:
    """Inference on encoded images (`image`) or raw pixels (`pixels`), as JSON or binary tensors."""
    return await _infer(request, pipeline, name, None)


@models.post(
    "/{name}/versions/{version}/infer",
    response_model=schemas.InferResponseV2,
    openapi_extra=schemas.INFER_REQUEST_BODY,
    responses=INFER_RESPONSES,
)
async def infer_version(request: Request, pipeline: PipelineDep, name: str, version: str) -> Response:
    """Inference on one version of the model (the card's version is the only one)."""
    return await _infer(request, pipeline, name, version)


def _metadata(pipeline: Pipeline, name: str, version: str | None) -> Response:
    check_model(pipeline.card, name, version)
    return json_response(model_metadata(pipeline.card))


async def _infer(request: Request, pipeline: Pipeline, name: str, version: str | None) -> Response:
    # The fast path answers these requests before FastAPI sees them, once the model is ready (and
    # without CORS): this route serves the rest, and documents the operation.
    content, headers = await infer.infer(pipeline, name, version, request.scope["headers"], request.receive)
    response = Response(content)
    response.raw_headers = [*headers, (b"content-length", str(len(content)).encode())]
    return response
