"""Hostile and odd inputs against a real uvicorn server: each gets its documented answer, never a 500.

Every case is sent over TCP to the session server (API key, 300 kB body limit, 4 images per request);
after each one the server must still be ready and classify a clean canvas correctly.
"""

# The corpora are tables, one case per line: long lines read better here than wrapped ones.
# ruff: noqa: E501

from __future__ import annotations

import io
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from models.data import CanvasSet
from tests.app.pipeline.test_imaging import tiff_with_fractional_strip_offsets
from tests.helpers import E2E_API_KEY, b64, png_bytes

CLEAN_INDEX = 42


def save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header declares width×height pixels (a decompression bomb's calling card)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def image_corpus() -> dict[str, tuple[bytes, int, str | None]]:
    """name → (file bytes, expected status, expected error code or None for 200)."""
    rng = np.random.default_rng(0)
    gray = Image.fromarray((np.arange(60 * 60).reshape(60, 60) % 251).astype(np.uint8))
    gif = save(gray.convert("P"), "GIF")
    jpeg = save(gray, "JPEG")
    sof = jpeg.find(b"\xff\xc0")
    frames = [Image.new("L", (40, 40), value).convert("P") for value in (0, 128, 255)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    apng = io.BytesIO()
    gray.save(apng, "PNG", save_all=True, append_images=[gray.rotate(90), gray.rotate(180)])
    pages = io.BytesIO()
    gray.save(pages, "TIFF", save_all=True, append_images=[gray.convert("RGB"), gray])
    floats = np.asarray(gray, dtype=np.float32) / 255
    floats[0, :3] = (np.nan, np.inf, -np.inf)
    palette = gray.convert("P")
    return {
        # decompression bombs: tiny files declaring huge images (413 before any pixel is decoded)
        "png 50000x50000": (png_declaring(50_000, 50_000), 413, "image_too_large"),
        "png 65535x65535": (png_declaring(65_535, 65_535), 413, "image_too_large"),
        "png 5000x5000": (png_declaring(5000, 5000), 413, "image_too_large"),
        "gif 65535x65535": (patched(gif, 6, struct.pack("<HH", 65535, 65535)), 413, "image_too_large"),
        "jpeg 60000x60000": (patched(jpeg, sof + 5, struct.pack(">HH", 60000, 60000)), 413, "image_too_large"),
        "bmp 50000x50000": (patched(save(gray, "BMP"), 18, struct.pack("<ii", 50000, 50000)), 413, "image_too_large"),
        "png 100000x16 no data": (png_declaring(100_000, 16), 400, "invalid_image"),
        # not images, or not a format we open
        "empty": (b"", 400, "invalid_image"),
        "random bytes": (rng.bytes(5000), 415, "unsupported_image"),
        "text named .png": (b"hello, I am definitely a PNG", 415, "unsupported_image"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="60" height="60"><rect/></svg>', 415, "unsupported_image"),
        "eps (ghostscript)": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 60 60\nshowpage\n", 415, "unsupported_image"),
        "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 415, "unsupported_image"),
        "ico": (save(gray.convert("RGBA"), "ICO"), 415, "unsupported_image"),
        # an allowed format's signature, then a broken header: named as that format's broken file
        "png magic + garbage": (b"\x89PNG\r\n\x1a\n" + rng.bytes(300), 400, "invalid_image"),
        "png 0x0": (png_declaring(0, 0), 400, "invalid_image"),
        "truncated png": (save(gray, "PNG")[:100], 400, "invalid_image"),
        "truncated jpeg": (jpeg[:200], 400, "invalid_image"),
        "lab tiff": (save(gray.convert("RGB").convert("LAB"), "TIFF"), 400, "invalid_image"),
        "tiff with fractional strip offsets": (tiff_with_fractional_strip_offsets(), 400, "invalid_image"),
        # sizes
        "1x1": (save(Image.new("L", (1, 1)), "PNG"), 400, "image_too_small"),
        "1x5000": (save(Image.new("L", (1, 5000)), "PNG"), 400, "image_too_small"),
        "5000x1": (save(Image.new("L", (5000, 1)), "PNG"), 400, "image_too_small"),
        "16x5000": (save(Image.new("L", (16, 5000)), "PNG"), 200, None),
        # animated and multi-page: the first frame / page
        "animated gif": (animated.getvalue(), 200, None),
        "apng": (apng.getvalue(), 200, None),
        "multi-page tiff": (pages.getvalue(), 200, None),
        # every mode
        "16-bit png": (save(Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257), "PNG"), 200, None),
        "32-bit int tiff": (save(Image.fromarray(np.asarray(gray, dtype=np.int32)), "TIFF"), 200, None),
        "float tiff with nan/inf": (save(Image.fromarray(floats), "TIFF"), 200, None),
        "cmyk jpeg": (save(gray.convert("CMYK"), "JPEG"), 200, None),
        "cmyk tiff": (save(gray.convert("CMYK"), "TIFF"), 200, None),
        "palette + transparency": (save(palette, "PNG", transparency=0), 200, None),
        "rgba": (save(gray.convert("RGBA"), "PNG"), 200, None),
        "la": (save(gray.convert("LA"), "PNG"), 200, None),
        "1-bit": (save(gray.convert("1"), "PNG"), 200, None),
        "webp": (save(gray.convert("RGB"), "WEBP"), 200, None),
        "bmp": (save(gray, "BMP"), 200, None),
        "corrupt exif": (save(gray, "JPEG", exif=b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x09"), 200, None),
    }  # fmt: skip


IMAGES = image_corpus()


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"X-API-Key": E2E_API_KEY}, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def still_serving(
    http: httpx.Client, canvases: CanvasSet, canvas_png: Callable[[int], bytes]
) -> Callable[[], None]:
    """Asserts the server is ready and classifies a clean canvas correctly."""
    clean = canvas_png(CLEAN_INDEX)
    label = str(int(canvases.labels[CLEAN_INDEX]))

    def check() -> None:
        assert http.get("/health/ready").status_code == 200
        response = http.post("/predict", files={"file": ("clean.png", clean, "image/png")})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == label

    return check


def assert_answer(response: httpx.Response, status: int, code: str | None) -> None:
    """The documented answer: 200 with predictions, or the one error shape with a stable code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    text = response.text
    assert "Traceback" not in text
    assert 'File "' not in text
    if code is None:
        assert body["predictions"] or body["heatmap"]
        return
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


@pytest.mark.parametrize("name", list(IMAGES))
@pytest.mark.parametrize("endpoint", ["/predict", "/attention-map"])
def test_hostile_images(
    http: httpx.Client, still_serving: Callable[[], None], name: str, endpoint: str
) -> None:
    data, status, code = IMAGES[name]
    params = {"overlay": "true"} if endpoint == "/attention-map" else {}
    as_file = http.post(endpoint, params=params, files={"file": ("x.png", data, "image/png")})
    assert_answer(as_file, status, code)
    as_json = http.post(endpoint, params=params, json={"image": b64(data)})
    assert_answer(as_json, status, code)
    still_serving()


def _multipart(body: bytes, boundary: str = "b0undary") -> dict[str, Any]:
    return {"content": body, "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}


def _json(body: bytes) -> dict[str, Any]:
    return {"content": body, "headers": {"content-type": "application/json"}}


def request_corpus(clean: bytes) -> dict[str, tuple[dict[str, Any], int, str]]:
    """name → (httpx.request keyword arguments for POST /predict, expected status, expected code)."""
    image = b64(clean)
    text_part = b'--b0undary\r\nContent-Disposition: form-data; name="file"\r\n\r\nhello\r\n--b0undary--\r\n'
    other_part = (
        b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + clean + b"\r\n--b0undary--\r\n"
    )
    return {
        # content types
        "no content type": ({"content": clean}, 415, "unsupported_media_type"),
        "raw image/png body": ({"content": clean, "headers": {"content-type": "image/png"}}, 415, "unsupported_media_type"),
        "text/plain": ({"content": b"hi", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        "urlencoded": ({"data": {"file": "x"}}, 415, "unsupported_media_type"),
        "multipart without boundary": ({"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 400, "invalid_request"),
        "multipart garbage": (_multipart(b"garbage without any boundary"), 400, "invalid_request"),
        "multipart unterminated": (_multipart(other_part[:60]), 400, "invalid_request"),
        "multipart text field 'file'": (_multipart(text_part), 400, "invalid_request"),
        "multipart other field name": (_multipart(other_part), 400, "invalid_request"),
        "five files": ({"files": [("file", ("a.png", clean, "image/png"))] * 5}, 413, "too_many_images"),
        # size limits
        "body over limit": ({"files": {"file": ("a.png", b"\0" * 400_000, "image/png")}}, 413, "payload_too_large"),
        "chunked body over limit": (
            {"content": iter([b'{"image": "', b"A" * 200_000, b"A" * 200_000, b'"}']),
             "headers": {"content-type": "application/json"}},
            413, "payload_too_large",
        ),
        # malformed JSON and base64
        "json truncated": ({"content": b'{"image": "iVBOR', "headers": {"content-type": "application/json"}}, 400, "invalid_request"),
        "json not utf-8": ({"content": b'{"image": "\xff\xfe"}', "headers": {"content-type": "application/json"}}, 400, "invalid_request"),
        "json null": (_json(b"null"), 422, "invalid_parameter"),
        "json list": ({"json": [image]}, 422, "invalid_parameter"),
        "json number": ({"json": 7}, 422, "invalid_parameter"),
        "json empty object": ({"json": {}}, 422, "invalid_parameter"),
        "json image and images": ({"json": {"image": image, "images": [image]}}, 422, "invalid_parameter"),
        "json extra field": ({"json": {"image": image, "exec": "rm -rf /"}}, 422, "invalid_parameter"),
        "json image is a number": ({"json": {"image": 12}}, 422, "invalid_parameter"),
        "json images not a list": ({"json": {"images": image}}, 422, "invalid_parameter"),
        "json images empty": ({"json": {"images": []}}, 400, "invalid_request"),
        "json five images": ({"json": {"images": [image] * 5}}, 413, "too_many_images"),
        "json deeply nested": ({"content": b"[" * 100_000, "headers": {"content-type": "application/json"}}, 400, "invalid_request"),
        "base64 bad characters": ({"json": {"image": "%%%%"}}, 400, "invalid_image"),
        "base64 bad padding": ({"json": {"image": image[:-3]}}, 400, "invalid_image"),
        "base64 empty": ({"json": {"image": ""}}, 400, "invalid_image"),
        "data url of text": ({"json": {"image": "data:image/png;base64," + b64(b"text")}}, 415, "unsupported_image"),
        # parameters
        "top_k=0": ({"params": {"top_k": "0"}, "json": {"image": image}}, 422, "invalid_parameter"),
        "top_k=-1": ({"params": {"top_k": "-1"}, "json": {"image": image}}, 422, "invalid_parameter"),
        "top_k=11": ({"params": {"top_k": "11"}, "json": {"image": image}}, 422, "invalid_parameter"),
        "top_k huge": ({"params": {"top_k": "9" * 40}, "files": {"file": ("a.png", clean, "image/png")}}, 422, "invalid_parameter"),
        "top_k=abc": ({"params": {"top_k": "abc"}, "files": {"file": ("a.png", clean, "image/png")}}, 422, "invalid_parameter"),
        "top_k=1.5": ({"params": {"top_k": "1.5"}, "json": {"image": image}}, 422, "invalid_parameter"),
        "top_k empty": ({"params": {"top_k": ""}, "json": {"image": image}}, 422, "invalid_parameter"),
        "top_k unicode digits": ({"params": {"top_k": "３"}, "files": {"file": ("a.png", clean, "image/png")}}, 422, "invalid_parameter"),
    }  # fmt: skip


ATTENTION_PARAMS: dict[str, dict[str, str]] = {
    "unknown target": {"target": "dog"},
    "empty target": {"target": ""},
    "numeric-looking target": {"target": "07"},
    "target with NUL": {"target": "7\0"},
    "kind=gradcam": {"kind": "gradcam"},
    "overlay=maybe": {"overlay": "maybe"},
    "colormap=jet": {"overlay": "true", "colormap": "jet"},
    "include_grid=2": {"include_grid": "2"},
}


def test_hostile_requests(
    http: httpx.Client, still_serving: Callable[[], None], canvas_png: Callable[[int], bytes]
) -> None:
    failures = []
    for name, (arguments, status, code) in request_corpus(canvas_png(CLEAN_INDEX)).items():
        response = http.post("/predict", **arguments)
        try:
            assert_answer(response, status, code)
        except AssertionError as failure:
            failures.append(f"{name}: {failure}")
        still_serving()
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", list(ATTENTION_PARAMS))
def test_hostile_attention_parameters(
    http: httpx.Client, still_serving: Callable[[], None], canvas_png: Callable[[int], bytes], name: str
) -> None:
    files = {"file": ("a.png", canvas_png(CLEAN_INDEX), "image/png")}
    assert_answer(
        http.post("/attention-map", params=ATTENTION_PARAMS[name], files=files), 422, "invalid_parameter"
    )
    still_serving()


def test_declared_length_over_the_limit_is_refused_before_the_body(server: str) -> None:
    """A client announcing a 1 GB body gets 413 at once, without the server waiting for the bytes."""
    host, port = server.removeprefix("http://").split(":")
    request = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {E2E_API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request.encode())
        reply = ""
        while not reply.endswith("}}"):
            chunk = sock.recv(65536).decode()
            assert chunk, reply
            reply += chunk
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"payload_too_large"' in reply


def test_unknown_paths_methods_and_missing_keys(http: httpx.Client, server: str) -> None:
    assert_answer(http.get("/predict"), 405, "method_not_allowed")
    assert_answer(http.get("/../../etc/passwd"), 404, "not_found")
    assert_answer(http.post("/models"), 405, "method_not_allowed")
    assert_answer(httpx.post(f"{server}/predict", json={}), 401, "unauthorized")
    assert_answer(
        httpx.post(f"{server}/predict", json={}, headers={"X-API-Key": E2E_API_KEY + "x"}),
        401,
        "unauthorized",
    )


def test_corpus_size() -> None:
    """docs/reliability.md quotes these counts."""
    assert len(IMAGES) == 39
    assert len(request_corpus(png_bytes(np.zeros((16, 16), dtype=np.uint8)))) == 37
    assert len(ATTENTION_PARAMS) == 8
