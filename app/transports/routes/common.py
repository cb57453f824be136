"""What the image routes share: their documented errors and the core's reply as a Starlette response."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from app.pipeline.core import Reply
from app.schemas import ErrorPublic

ERROR_DESCRIPTIONS = {
    400: "Undecodable image, malformed body or image below the minimum size.",
    401: "Missing or wrong API key, or more than one (only when keys are configured).",
    413: "Body, image pixel count or image count over the limit.",
    415: "Unsupported content type or image format.",
    422: "Invalid parameter (top_k, target, kind, …) or body shape.",
    503: "Model not ready or queue full; see Retry-After.",
    504: "The request's deadline passed.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorPublic, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


IMAGE_ERRORS = error_responses(400, 401, 413, 415, 422, 503, 504)
RESULTS_DESCRIPTION = 'One image: the single response. Several: `{"results": [...]}` in request order.'


def reply_response(reply: Reply) -> Response:
    response = Response(reply.body, status_code=reply.status)
    response.raw_headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
    return response
