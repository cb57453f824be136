"""Domain exceptions and the one place they become HTTP responses.

Every error leaves the service as ``{"error": {"code": "...", "message": "..."}}``. Client mistakes map
to 4xx with a message that says what to fix; anything unexpected is logged with its trace and answered
with a generic 500 that reveals nothing about the internals.
"""

# The style guide names domain errors for what happened (InvalidImage, Overloaded), without "Error".
# ruff: noqa: N818

from __future__ import annotations

import logging
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

logger = logging.getLogger("glimpse.errors")


class GlimpseError(Exception):
    """Base of the service's domain errors: each subclass fixes a status and a machine-readable code."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequest(GlimpseError):
    status_code, code = 400, "invalid_request"


class InvalidImage(GlimpseError):
    status_code, code = 400, "invalid_image"


class ImageTooSmall(GlimpseError):
    status_code, code = 400, "image_too_small"


class Unauthorized(GlimpseError):
    status_code, code = 401, "unauthorized"


class PayloadTooLarge(GlimpseError):
    status_code, code = 413, "payload_too_large"


class ImageTooLarge(GlimpseError):
    status_code, code = 413, "image_too_large"


class TooManyImages(GlimpseError):
    status_code, code = 413, "too_many_images"


class UnsupportedMediaType(GlimpseError):
    status_code, code = 415, "unsupported_media_type"


class UnsupportedImage(GlimpseError):
    status_code, code = 415, "unsupported_image"


class InvalidParameter(GlimpseError):
    status_code, code = 422, "invalid_parameter"


class ModelNotReady(GlimpseError):
    status_code, code = 503, "not_ready"


class Overloaded(GlimpseError):
    status_code, code = 503, "overloaded"


class DeadlineExceeded(GlimpseError):
    status_code, code = 504, "deadline_exceeded"


_STARLETTE_CODES = {404: "not_found", 405: "method_not_allowed"}


def error_body(code: str, message: str) -> bytes:
    """The one error shape, as compact JSON like every other answer."""
    return orjson.dumps({"error": {"code": code, "message": message}})


def error_response(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = error_body(code, message)
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


async def _glimpse_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, GlimpseError)
    return error_response(exc.status_code, exc.code, exc.message, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_parameter", _describe(exc.errors()))


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _STARLETTE_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def _describe(errors: Any) -> str:
    """One readable line from pydantic's error list: ``query.top_k: Input should be ...``."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{location}: {error.get('msg', 'invalid')}" if location else str(error.get("msg")))
    return "; ".join(parts) or "invalid parameters"


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the service can raise to the one JSON shape."""
    app.add_exception_handler(GlimpseError, _glimpse_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
