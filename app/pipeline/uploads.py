"""Reading the images out of a request body: multipart ``file`` parts, or JSON with base64 strings.

One body reader and one parser for each format, for every transport. The body is read with a hard
byte limit (the declared Content-Length first, then the bytes received, so chunked uploads are bounded
too). Before any costly parsing, what an image request can hold is checked by counting bytes in C: a
multipart body with more parts, or a JSON body with more values, than :data:`max_images` images need is
refused at once instead of parsed on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import Receive

from app.errors import (
    InvalidImage,
    InvalidParameter,
    InvalidRequest,
    PayloadTooLarge,
    TooManyImages,
    UnsupportedMediaType,
)
from app.pipeline.query import quote

if TYPE_CHECKING:
    from collections.abc import Mapping

    from python_multipart.multipart import MultipartCallbacks

NO_IMAGE = "no image in the request: send a multipart part named 'file' or JSON {'image': ...}"
# Parts besides the images that a multipart body may carry (other form fields are ignored).
EXTRA_PARTS = 16


@dataclass(slots=True)
class Upload:
    """The image files of one request; ``several`` when the client asked for a ``results`` list."""

    images: list[bytes]
    several: bool


def media_type(content_type: bytes) -> bytes:
    return content_type.split(b";", 1)[0].strip().lower()


def check_declared_length(declared: bytes | None, max_body_bytes: int) -> None:
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise PayloadTooLarge(f"the body is {declared.decode()} bytes; the limit is {max_body_bytes}")


def check_content_encoding(encoding: bytes | None) -> None:
    """Bodies are read as sent: a compressed one would be parsed as garbage, so it is refused by name.

    Raises:
        UnsupportedMediaType: Any Content-Encoding but identity (RFC 9110 §15.5.16 gives 415 for it).
    """
    if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
        shown = quote(encoding.decode("latin-1"))
        raise UnsupportedMediaType(f"Content-Encoding {shown} is not supported: send the body uncompressed")


async def read_upload(headers: Mapping[bytes, bytes], receive: Receive, max_body_bytes: int) -> bytes:
    """A request's whole body, as every transport reads one: refused before any of it is read when its
    headers say it is compressed or too large, and as it arrives past ``max_body_bytes``."""
    check_content_encoding(headers.get(b"content-encoding"))
    check_declared_length(headers.get(b"content-length"), max_body_bytes)
    return await read_body(receive, max_body_bytes)


async def read_body(receive: Receive, max_body_bytes: int) -> bytes:
    """The whole body from the ASGI channel, refused past ``max_body_bytes``.

    Raises:
        PayloadTooLarge: Past the limit.
        InvalidRequest: The client went away before the end of the body.
    """
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


def parse_upload(body: bytes, content_type: bytes, max_images: int) -> Upload:
    """The images of a multipart or JSON body.

    Raises:
        UnsupportedMediaType: Neither multipart/form-data nor JSON (the caller checks first).
        InvalidRequest, InvalidParameter, InvalidImage: A malformed body, or one with no image.
        TooManyImages: More than ``max_images`` images, or more parts/values than they need.
    """
    kind = media_type(content_type)
    if kind == b"multipart/form-data":
        images = multipart_files(body, content_type, max_images)
        upload = Upload(images, several=len(images) > 1)
    else:
        upload = json_images(body, max_images)
    if len(upload.images) > max_images:
        raise TooManyImages(f"{len(upload.images)} images in one request; the limit is {max_images}")
    return upload


COUNT_STEP_BYTES = 1 << 20


def count_exceeds(body: bytes, needle: bytes, limit: int) -> bool:
    """Whether ``needle`` occurs more than ``limit`` times in ``body``, counted a MiB at a time.

    ``bytes.count`` holds the GIL for its whole call: over a 16 MiB body that is tens of milliseconds
    in which the event loop cannot run, even when this runs in the pool. A MiB at a time lets the loop
    in between, and the count stops as soon as it is over the limit.
    """
    count, reach = 0, len(needle) - 1  # an occurrence is counted in the step where it starts
    for start in range(0, len(body), COUNT_STEP_BYTES):
        count += body.count(needle, start, start + COUNT_STEP_BYTES + reach)
        if count > limit:
            return True
    return False


def multipart_files(body: bytes, content_type: bytes, max_images: int) -> list[bytes]:
    """The ``file`` parts of a multipart body, by slicing when it has the plain shape every HTTP
    client sends, else by python-multipart's parser, which words any error.

    Raises:
        InvalidRequest: Malformed, no boundary, a ``file`` text field, or no ``file`` part.
        TooManyImages: More parts than ``max_images`` images and :data:`EXTRA_PARTS` fields.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("malformed multipart body: the Content-Type names no boundary")
    max_parts = max_images + EXTRA_PARTS
    if count_exceeds(body, b"--" + boundary, max_parts + 1):
        raise TooManyImages(
            f"the multipart body has more than {max_parts} parts; images are limited to "
            f"{max_images} a request"
        )
    files = _plain_file_parts(body, boundary)
    if files is None:
        files = _parsed_file_parts(body, boundary)
    if not files:
        raise InvalidRequest(NO_IMAGE)
    return files


def _plain_file_parts(body: bytes, boundary: bytes) -> list[bytes] | None:
    """The ``file`` parts of a body in the plain shape every HTTP client sends, by slicing; else None.

    The plain shape: the body opens with the first delimiter, every line break is CRLF, each part has
    at most :data:`PLAIN_MAX_HEADERS` ``token: value`` headers, and the closing delimiter ends the body
    (or one CRLF after it). Within it, a part's content is everything up to the next CRLF and
    delimiter, which RFC 2046 forbids inside content, so slicing there is what python-multipart's
    state machine arrives at, for half the CPU per 60×60 upload (``python -m bench.request_cost``).
    Anything else (or a doubt) gives None, and :func:`_parsed_file_parts` reads the body.
    ``tests/app/pipeline/test_uploads.py`` checks on generated and mutated bodies that the two agree
    whenever this one answers.
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
            if not _is_file_upload(disposition, options):
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


def _is_file_upload(disposition: bytes, options: dict[bytes, bytes]) -> bool:
    """Whether a part is a file: it has a file name, as ``filename`` or only as RFC 5987's
    ``filename*=UTF-8''…`` (which ``parse_options_header`` drops), as some clients write a non-ASCII one."""
    return b"filename" in options or b"filename*" in disposition.lower()


def _parsed_file_parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The ``file`` parts by python-multipart's parser, for a body of any shape.

    Raises:
        InvalidRequest: Malformed, or a ``file`` part that is a text field.
    """
    collector = _PartCollector()
    try:
        parser = MultipartParser(boundary, collector.callbacks(), max_size=len(body))
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as exc:
        raise InvalidRequest(f"malformed multipart body: {quote(str(exc))}") from exc
    if collector.file_field_without_name:
        raise InvalidRequest("the 'file' part must be a file upload, not a text field")
    if not collector.complete:
        raise InvalidRequest("malformed multipart body: it ends before its closing boundary")
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
        if not _is_file_upload(self._disposition, options):
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


def json_images(body: bytes, max_images: int) -> Upload:
    """The images of a JSON body: ``{"image": "<base64>"}`` or ``{"images": ["<base64>", …]}``.

    Raises:
        InvalidRequest: Not JSON, or more values than an image request holds.
        InvalidParameter: Not one of the two shapes.
        TooManyImages: More than ``max_images`` images (counted before any is decoded).
        InvalidImage: An image that is not base64.
    """
    # Commas and quotes bound the values and keys a body holds; base64 has neither, a data: URL one
    # comma. Parsing a million tiny values would hold the event loop (and the GIL) for seconds.
    if count_exceeds(body, b",", 2 * max_images + 8) or count_exceeds(body, b'"', 2 * max_images + 8):
        raise TooManyImages(
            f"the JSON body holds more values than {max_images} images need: send "
            f'{{"image": "<base64>"}} or {{"images": [at most {max_images} base64 strings]}}'
        )
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidParameter("body: send a JSON object with 'image' or 'images'")
    for key in data:
        if key not in ("image", "images"):
            raise InvalidParameter(f"body: unknown field {quote(key)}; send 'image' or 'images'")
    if len(data) != 1:
        raise InvalidParameter("body: send exactly one of 'image' or 'images'")
    if "image" in data:
        if not isinstance(data["image"], str):
            raise InvalidParameter("body.image: must be a base64 string")
        return Upload([_b64decode(data["image"], 0)], several=False)
    texts = data["images"]
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise InvalidParameter("body.images: must be a list of base64 strings")
    if not texts:
        raise InvalidRequest(NO_IMAGE)
    if len(texts) > max_images:
        raise TooManyImages(f"{len(texts)} images in one request; the limit is {max_images}")
    return Upload([_b64decode(text, i) for i, text in enumerate(texts)], several=True)


def _b64decode(text: str, position: int) -> bytes:
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return decode_base64(text)
    except ValueError as exc:
        raise InvalidImage(f"image {position} is not valid base64: {exc}") from exc


_LINE_BREAKS = str.maketrans("", "", " \t\r\n")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=\t\r\n ]")


def decode_base64(text: str | bytes) -> bytes:
    """Standard base64 (RFC 4648), also broken into lines as MIME, ``base64 FILE`` without ``-w0`` and
    ``openssl base64`` write it; as text, or as the bytes a v2 JSON tensor holds (not copied to text
    unless it needs the slower second look).

    Raises:
        ValueError: Not base64, worded to say where (the first character outside the alphabet) or why.
    """
    try:
        return base64.b64decode(text, validate=True)  # the usual case, at C speed
    except (binascii.Error, ValueError):
        pass
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    try:
        return base64.b64decode(text.translate(_LINE_BREAKS), validate=True)
    except (binascii.Error, ValueError) as exc:
        stray = _NOT_BASE64.search(text)
        if stray is not None:
            raise ValueError(
                f"the character {quote(stray.group())} at position {stray.start()} is not in the "
                "standard base64 alphabet (A-Z, a-z, 0-9, +, / and = padding)"
            ) from None
        raise ValueError(f"{exc} (its length without line breaks must be a multiple of 4)") from None
