"""Reading the images out of a request: multipart ``file`` parts or a JSON body of base64 strings.

The body is read with a hard byte limit (the declared Content-Length is checked first, then the bytes
actually received, so chunked uploads are bounded too). :func:`simple_multipart_files` is the hot path's
parser: slicing for the plain bodies HTTP clients send, python-multipart's callback parser straight over
any other body, without Starlette's form machinery either way.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message, Receive

from app.errors import (
    InvalidImage,
    InvalidParameter,
    InvalidRequest,
    PayloadTooLarge,
    TooManyImages,
    UnsupportedMediaType,
)
from app.schemas import ImagesRequest

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

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
    check_declared_length(request.headers.get("content-length"), max_body_bytes)
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_body_bytes:
            raise PayloadTooLarge(f"the body exceeds the limit of {max_body_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def check_declared_length(declared: str | None, max_body_bytes: int) -> None:
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {max_body_bytes}")


async def read_body(receive: Receive, max_body_bytes: int) -> bytes:
    """The whole body from the raw ASGI channel, with the same limit and message as :func:`read_upload`."""
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            raise InvalidRequest("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > max_body_bytes:
            raise PayloadTooLarge(f"the body exceeds the limit of {max_body_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def simple_multipart_files(body: bytes, content_type: bytes) -> list[bytes] | None:
    """The ``file`` parts of a well-formed multipart body whose ``file`` parts are all file uploads.

    Returns None for anything else (malformed, no boundary, no ``file`` part, a ``file`` text field):
    the caller then hands the body to :func:`read_upload`, which words the error.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        return None
    files = _plain_file_parts(body, boundary)
    return files if files is not None else _parsed_file_parts(body, boundary)


def _plain_file_parts(body: bytes, boundary: bytes) -> list[bytes] | None:
    """The ``file`` parts of a body in the plain shape every HTTP client sends, by slicing; else None.

    The plain shape: the body opens with the first delimiter, every line break is CRLF, each part has
    at most :data:`PLAIN_MAX_HEADERS` ``token: value`` headers, and the closing delimiter ends the body
    (or one CRLF after it). Within it, a part's content is everything up to the next CRLF and
    delimiter, which RFC 2046 forbids inside content, so slicing there is what python-multipart's
    state machine arrives at, for half the CPU per 60×60 upload (``python -m bench.request_cost``,
    ``bench/results/20261129-plain-multipart-cpu/``). Anything else (or a doubt) gives None, and
    :func:`_parsed_file_parts` reads the body as before. ``tests/test_app_uploads.py`` checks on
    generated and mutated bodies that the two agree whenever this one answers.
    """
    delimiter = b"--" + boundary
    if not body.startswith(delimiter + b"\r\n"):
        return None
    separator = b"\r\n" + delimiter
    files: list[bytes] = []
    start = len(delimiter) + 2
    while True:
        headers_end = body.find(b"\r\n\r\n", start, start + PLAIN_MAX_HEADER_BYTES)
        if headers_end < 0:
            return None
        content_end = body.find(separator, headers_end + 4)
        if content_end < 0:
            return None
        disposition = _plain_disposition(body[start:headers_end])
        if disposition is None:
            return None
        _, options = parse_options_header(disposition)
        if options.get(b"name") == b"file":
            if b"filename" not in options:
                return None  # a text field named file: the full parser's caller words the error
            files.append(body[headers_end + 4 : content_end])
        after = content_end + len(separator)
        ending = body[after : after + 2]
        if ending == b"--":
            return files if body[after + 2 :] in (b"", b"\r\n") and files else None
        if ending != b"\r\n":
            return None
        start = after + 2


# Within python-multipart's own limits on a part's headers (8 of them, 4,224 bytes each).
PLAIN_MAX_HEADERS = 8
PLAIN_MAX_HEADER_BYTES = 4096
_TOKEN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")


def _plain_disposition(headers: bytes) -> bytes | None:
    """The Content-Disposition value of a part's header block in the plain shape, else None."""
    lines = headers.split(b"\r\n")
    if len(lines) > PLAIN_MAX_HEADERS:
        return None
    disposition = None
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or not _TOKEN.issuperset(name) or b"\r" in value or b"\n" in value:
            return None
        if name.lower() == b"content-disposition":
            if disposition is not None:
                return None
            disposition = value.lstrip(b" ")
    return disposition


def _parsed_file_parts(body: bytes, boundary: bytes) -> list[bytes] | None:
    """:func:`simple_multipart_files` by python-multipart's parser, for a body of any shape."""
    collector = _PartCollector()
    try:
        parser = MultipartParser(boundary, collector.callbacks(), max_size=len(body))
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError):
        return None
    if not collector.complete or not collector.files or collector.file_field_without_name:
        return None
    return collector.files


class _PartCollector:
    """python-multipart callbacks keeping the bytes of every part named ``file``."""

    def __init__(self) -> None:
        self.files: list[bytes] = []
        self.file_field_without_name = False  # a ``file`` part without filename: a text field
        self.complete = False
        self._header_field = b""
        self._header_value = b""
        self._disposition = b""
        self._chunks: list[bytes] | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._chunks = None

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_field.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != b"file":
            return
        if b"filename" not in options:
            self.file_field_without_name = True
            return
        self._chunks = []

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._chunks is not None:
            self._chunks.append(data[start:end])

    def _part_end(self) -> None:
        if self._chunks is not None:
            self.files.append(b"".join(self._chunks))
            self._chunks = None

    def _end(self) -> None:
        self.complete = True


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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # nesting: [[[[…
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
