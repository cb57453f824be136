"""Reading the images out of a request: multipart ``file`` parts or a JSON body of base64 strings.

The body is read with a hard byte limit (the declared Content-Length is checked first, then the bytes
actually received, so chunked uploads are bounded too).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message

from app.errors import (
    InvalidImage,
    InvalidParameter,
    InvalidRequest,
    PayloadTooLarge,
    TooManyImages,
    UnsupportedMediaType,
)
from app.schemas import ImagesRequest

MULTIPART_MAX_PARTS = 1000  # Starlette's parser limit; the image cap below is the real one


@dataclass(slots=True)
class Upload:
    """The image files of one request; ``several`` when the client asked for a ``results`` list."""

    images: list[bytes]
    several: bool


async def read_upload(request: Request, max_body_bytes: int, max_images: int) -> Upload:
    """Extract the image files from a multipart or JSON request.

    Raises:
        PayloadTooLarge: The body exceeds ``max_body_bytes``.
        UnsupportedMediaType: The body is neither multipart/form-data nor JSON.
        InvalidRequest: The body is malformed or holds no image.
        TooManyImages: More than ``max_images`` images.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        body = await _read_body(request, max_body_bytes)
        upload = await _from_multipart(request, body)
    elif media_type == "application/json" or media_type.endswith("+json"):
        upload = _from_json(await _read_body(request, max_body_bytes))
    else:
        raise UnsupportedMediaType(
            f"unsupported content type {media_type or '(none)'!r}: send multipart/form-data with a "
            "'file' part or application/json with 'image' or 'images'"
        )
    if not upload.images:
        raise InvalidRequest(
            "no image in the request: send a multipart part named 'file' or JSON {'image': ...}"
        )
    if len(upload.images) > max_images:
        raise TooManyImages(f"{len(upload.images)} images in one request; the limit is {max_images}")
    return upload


async def _read_body(request: Request, max_body_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {max_body_bytes}")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_body_bytes:
            raise PayloadTooLarge(f"the body exceeds the limit of {max_body_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _from_multipart(request: Request, body: bytes) -> Upload:
    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(
            max_files=MULTIPART_MAX_PARTS, max_fields=MULTIPART_MAX_PARTS
        )
    except HTTPException as exc:  # Starlette reports malformed multipart bodies this way
        raise InvalidRequest(f"malformed multipart body: {exc.detail}") from exc
    try:
        images: list[bytes] = []
        for value in form.getlist("file"):
            if not isinstance(value, UploadFile):
                raise InvalidRequest("the 'file' part must be a file upload, not a text field")
            images.append(await value.read())
    finally:
        await form.close()
    return Upload(images, several=len(images) > 1)


def _from_json(body: bytes) -> Upload:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc
    try:
        parsed = ImagesRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        raise InvalidParameter(f"body{'.' + location if location else ''}: {first['msg']}") from exc
    if parsed.image is not None:
        return Upload([_b64decode(parsed.image, 0)], several=False)
    assert parsed.images is not None
    return Upload([_b64decode(text, i) for i, text in enumerate(parsed.images)], several=True)


def _b64decode(text: str, position: int) -> bytes:
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"image {position} is not valid base64: {exc}") from exc
