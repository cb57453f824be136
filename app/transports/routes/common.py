"""What the image routes share: the OpenAPI request body, the documented errors, fast JSON responses."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from app.schemas import ErrorPublic, ImagesRequest

# The routes read the body themselves (multipart or JSON on one path), so the schema is declared here.
_FILE_ITEMS = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
IMAGE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One or several images: repeat the multipart part `file`, or send JSON with `image` "
        'or `images` (base64). Several images give a `{"results": [...]}` response, in order.',
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": _FILE_ITEMS,
                            "description": "Image file(s): PNG, JPEG, WebP, BMP, GIF (first frame), TIFF "
                            "(first page); any mode; EXIF orientation is applied.",
                        }
                    },
                    "required": ["file"],
                },
                "encoding": {"file": {"contentType": "image/*"}},
            },
            "application/json": {"schema": ImagesRequest.model_json_schema()},
        },
    }
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Undecodable image, malformed body or image below the minimum size.",
        401: "Missing or wrong API key (only when keys are configured).",
        413: "Body, image pixel count or image count over the limit.",
        415: "Unsupported content type or image format.",
        422: "Invalid parameter (top_k, target, body shape).",
        503: "Model not ready or queue full; see Retry-After.",
        504: "The request's deadline passed.",
    }
    return {status: {"model": ErrorPublic, "description": descriptions[status]} for status in statuses}


IMAGE_ERRORS = error_responses(400, 401, 413, 415, 422, 503, 504)


def json_response(payload: Any) -> Response:
    """Serialise with orjson: the payloads are plain dicts, no model validation needed."""
    return Response(orjson.dumps(payload), media_type="application/json")
