"""Malformed JSON is a 400 and error messages quote little of the client's input (issue 22, 7 and 8).

Sent to a real uvicorn server with the default limits (16 MiB bodies), on both image endpoints; at the
end its log must hold no traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.pipeline.query import ECHO_MAX_CHARS
from bench.attacks import MULTIPART, multipart_file
from tests.helpers import b64, png_bytes
from tests.serving import Server, running

PATHS = ("/predict", "/attention-map")
# The longest error message a request with a long input may get: the fixed wording plus at most
# ECHO_MAX_CHARS characters of the input (repr'd, so an escaped character counts up to 4 times).
MESSAGE_MAX_CHARS = 4 * ECHO_MAX_CHARS + 300
MALFORMED_JSON = {
    "integer of 5,000 digits": b'{"image": ' + b"7" * 5000 + b"}",
    "integer of 5,000 digits in a list": b'{"images": [' + b"9" * 5000 + b"]}",
    "negative integer of 5,000 digits": b'{"image": -' + b"1" * 5000 + b"}",
    "100,000-deep arrays": b"[" * 100_000 + b"]" * 100_000,
    "2,000-deep arrays inside the image": b'{"image": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    "invalid UTF-8 in a string": b'{"image": "\xff\xfe"}',
    "invalid UTF-8 in a key": b'{"\xc3\x28": ""}',
    "a lone surrogate escape": b'{"image": "\\ud800"}',
    "NaN": b'{"image": NaN}',
    "Infinity": b'{"image": Infinity}',
    "a trailing comma": b'{"image": "",}',
    "single quotes": b"{'image': ''}",
    "a byte-order mark": b'\xef\xbb\xbf{"image": ""}',
    "two documents": b'{"image": ""} {"image": ""}',
    "truncated": b'{"image": "iVBOR',
    "empty": b"",
    "a NUL byte": b'{"image": "\x00"}',
    "UTF-16": '{"image": ""}'.encode("utf-16"),
}
# Valid JSON with more keys or values than an image request holds: refused before it is parsed.
TOO_MANY_VALUES = {
    "100,000-deep objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "5,000 keys": b"{" + b",".join(b'"k%d":0' % i for i in range(5000)) + b"}",
    "40 images": b'{"images": [' + b",".join([b'""'] * 40) + b"]}",
}


@pytest.fixture(scope="module")
def default_server() -> Iterator[Server]:
    with running({}) as server:
        yield server
        log = Path(server.log.name).read_text(errors="replace")
        assert "Traceback" not in log, log[-4000:]
        assert "unhandled error" not in log, log[-4000:]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(MALFORMED_JSON))
def test_malformed_json_is_a_400(default_server: Server, name: str, path: str) -> None:
    response = httpx.post(
        default_server.url + path,
        content=MALFORMED_JSON[name],
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert len(response.json()["error"]["message"]) < MESSAGE_MAX_CHARS


@pytest.mark.parametrize("name", list(TOO_MANY_VALUES))
def test_json_with_too_many_values_is_a_413(default_server: Server, name: str) -> None:
    response = httpx.post(
        default_server.url + "/predict",
        content=TOO_MANY_VALUES[name],
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_many_images"


def _long_inputs() -> dict[str, tuple[str, bytes, str, int, str]]:
    """name → (query, body, content type, expected status, the long input)."""
    image = png_bytes(np.full((32, 32), 200, dtype=np.uint8))
    key = "k" * (1 << 20)
    name = "n" * 60_000  # a query string of 1 MiB would meet the server's header limit first
    target = "t" * 8000
    field = "f" * 60_000
    long_type = "application/x-" + "y" * 8000
    bare_lf = (
        f'--b\nContent-Disposition: form-data; name="{field}"\n\n\r\n--b\r\n'.encode()
        + b'Content-Disposition: form-data; name="file"\r\n\r\nnot a file\r\n--b--\r\n'
    )
    return {
        "a 1 MiB JSON key": ("", b'{"' + key.encode() + b'": ""}', "application/json", 422, key),
        "a long unknown parameter": (f"{name}=1", b"", "application/json", 422, name),
        "a long target": (f"target={target}", b"", "application/json", 422, target),
        "a long top_k": ("top_k=" + "9" * 8000, b"", "application/json", 422, "9" * 8000),
        "a long content type": ("", b"{}", long_type, 415, long_type),
        "a long multipart field name": ("", bare_lf, "multipart/form-data; boundary=b", 400, field),
        "a long base64 text": (
            "",
            b'{"image": "' + b"%" * 100_000 + b'"}',
            "application/json",
            400,
            "%" * 1000,
        ),
        "a long filename": (
            "",
            multipart_file(image, "image/png").replace(
                b'filename="attack"', b'filename="' + b"n" * 60_000 + b'"'
            ),
            MULTIPART,
            400,  # past python-multipart's limit on a part's headers
            "n" * 60_000,
        ),
        "a long image in JSON": (
            "",
            b'{"image": "' + b64(b"x" * 300_000).encode() + b'"}',
            "application/json",
            415,
            "x" * 1000,
        ),
    }


LONG_INPUTS = _long_inputs()


@pytest.mark.parametrize("name", list(LONG_INPUTS))
def test_errors_quote_at_most_200_characters_of_input(default_server: Server, name: str) -> None:
    query, body, content_type, status, long_input = LONG_INPUTS[name]
    path = "/attention-map" if query.startswith("target") else "/predict"
    response = httpx.post(
        f"{default_server.url}{path}?{query}" if query else default_server.url + path,
        content=body,
        headers={"content-type": content_type},
        timeout=30,
    )
    assert response.status_code == status, response.text[:1000]
    assert len(response.content) < MESSAGE_MAX_CHARS + 100
    message = response.json()["error"]["message"]
    assert len(message) < MESSAGE_MAX_CHARS, message
    assert long_input[: ECHO_MAX_CHARS + 1] not in message
