"""The OpenAPI document, made to match the service exactly once the model is known.

FastAPI describes the routes; this adds what only the served model and the settings know: the query
parameters of the image routes from :mod:`app.pipeline.query` (``top_k`` up to the number of classes,
``target`` one of the labels), the request bodies with their item limits, the API-key scheme only when
keys are configured, and one real example per error status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.config import Settings
from app.pipeline.query import PATHS, openapi_parameters

SECURED_TAGS = {"inference", "models"}
SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "Bearer": {"type": "http", "scheme": "bearer"},
}
_BASE64_ITEMS = {"type": "string", "contentEncoding": "base64"}


def error_examples(settings: Settings, labels: Sequence[str]) -> dict[int, tuple[str, str]]:
    """A real code and message for each status the image routes answer with."""
    pixels = settings.max_image_pixels
    return {
        400: ("invalid_image", "the image could not be decoded: image file is truncated"),
        401: ("unauthorized", "missing API key: send an X-API-Key header"),
        413: ("image_too_large", f"the image is 5000×5000 = 25000000 pixels; the limit is {pixels}"),
        415: (
            "unsupported_image",
            "the image format is not recognised; send PNG, JPEG, WebP, BMP, GIF or TIFF",
        ),
        422: ("invalid_parameter", f"top_k must be a whole number from 1 to {len(labels)}, got '0'"),
        503: ("overloaded", "the inference queue is full; retry shortly"),
        504: ("deadline_exceeded", "the request did not finish within its deadline"),
    }


def request_body(max_images: int) -> dict[str, Any]:
    return {
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
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                            "maxItems": max_images,
                            "description": "Image file(s): PNG, JPEG, WebP, BMP, GIF (first frame), TIFF "
                            "(first page); any mode; EXIF orientation is applied.",
                        }
                    },
                    "required": ["file"],
                },
                "encoding": {"file": {"contentType": "image/*"}},
            },
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            "type": "object",
                            "properties": {"image": {**_BASE64_ITEMS, "description": "One image file."}},
                            "required": ["image"],
                            "additionalProperties": False,
                        },
                        {
                            "type": "object",
                            "properties": {
                                "images": {
                                    "type": "array",
                                    "items": _BASE64_ITEMS,
                                    "minItems": 1,
                                    "maxItems": max_images,
                                    "description": 'Image files; the answer is `{"results": [...]}`.',
                                }
                            },
                            "required": ["images"],
                            "additionalProperties": False,
                        },
                    ]
                }
            },
        },
    }


def complete(
    schema: dict[str, Any], settings: Settings, labels: Sequence[str], model: dict[str, str]
) -> None:
    """Fill in, in place, what the served model and the settings decide (module docstring)."""
    examples = error_examples(settings, labels)
    for path, operation in PATHS.items():
        post = schema["paths"][path]["post"]
        post["parameters"] = openapi_parameters(operation, labels)
        post["requestBody"] = request_body(settings.max_images_per_request)
        for status, (code, message) in examples.items():
            response = post["responses"].get(str(status))
            if response is not None:
                content = response.setdefault("content", {}).setdefault("application/json", {})
                content["example"] = {"error": {"code": code, "message": message}}
    components = schema.setdefault("components", {})
    ref = components.get("schemas", {}).get("ModelRefPublic")
    if ref is not None:
        ref["properties"]["name"]["examples"] = [model["name"]]
        ref["properties"]["version"]["examples"] = [model["version"]]
    if settings.api_keys:
        components["securitySchemes"] = SECURITY_SCHEMES
        for methods in schema["paths"].values():
            for operation_spec in methods.values():
                if SECURED_TAGS & set(operation_spec.get("tags", ())):
                    operation_spec["security"] = [{"ApiKey": []}, {"Bearer": []}]
