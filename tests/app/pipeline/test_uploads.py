"""The hot path's multipart reader: slicing plain bodies agrees with python-multipart on every body.

:func:`app.pipeline.uploads._plain_file_parts` answers only for bodies in the plain shape and gives None
for any other, which :func:`app.pipeline.uploads._parsed_file_parts` (python-multipart) then reads. Whenever
the slicer
answers, both must give the same files; and it must answer for what real clients send, or the fast
path would never run.
"""

from __future__ import annotations

import base64
import json
import os

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import InvalidImage, InvalidRequest
from app.pipeline.uploads import (
    COUNT_STEP_BYTES,
    _parsed_file_parts,
    _plain_file_parts,
    count_exceeds,
    json_images,
    multipart_files,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=?"
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + b"\r\n--not-the-boundary\r\n"


def _httpx_body(files: list[tuple[str, bytes]], data: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    parts = [(name, ("d.png", content, "image/png")) for name, content in files]
    request = httpx.Request("POST", "http://x/predict", files=parts, data=data)
    return request.read(), request.headers["content-type"].encode()


def test_the_body_httpx_sends_is_sliced() -> None:
    body, content_type = _httpx_body([("file", IMAGE), ("file", b""), ("other", b"x")], {"note": "hi"})
    boundary = content_type.partition(b"boundary=")[2]
    assert _plain_file_parts(body, boundary) == [IMAGE, b""]
    assert multipart_files(body, content_type, max_images=4) == [IMAGE, b""]


def test_the_body_curl_sends_is_sliced() -> None:
    boundary = b"------------------------d74496d66958873e"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="canvas.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + IMAGE + b"\r\n--" + boundary + b"--\r\n"
    )
    assert _plain_file_parts(body, boundary) == [IMAGE]


@pytest.mark.parametrize(
    "body",
    [
        b'--b\nContent-Disposition: form-data; name="file"; filename="a"\n\nxx\n--b--',  # bare LF
        b'preamble\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nxx\r\n--b--',
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nxx\r\n--b--epilogue',
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nxx\r\n--bb\r\n--b--',
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nxx\r\n--b  \r\n',
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nxx\r\n--bZZ'
        b'Content-Disposition: form-data; name="file"; filename="q"\r\n\r\nyy\r\n--b--',
        b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nxx\r\n--b--',  # a text field
        b'--b\r\nBad Header: 1\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        b"x\r\n--b--",
        b'--b\r\nContent-Disposition: form-data; name="other"; filename="a"\r\n\r\nxx\r\n--b--',
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nxx',  # truncated
    ],
)
def test_unusual_bodies_go_to_the_full_parser(body: bytes) -> None:
    assert _plain_file_parts(body, b"b") is None


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, bytes, list[bytes] | None]:
    """A multipart body, its boundary and, when it is plain, its files; some have a few bytes changed,
    inserted or removed."""
    boundary = draw(st.text(TOKEN, min_size=1, max_size=70)).encode()
    parts, files = [], []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from([b"file", b"file", b"other", b"File"]))
        disposition = b'form-data; name="' + name + b'"'
        if draw(st.booleans()) or name == b"file":
            disposition += b'; filename="' + draw(st.sampled_from([b"a.png", b"", b"x y;z.png"])) + b'"'
        headers = [b"Content-Disposition: " + disposition]
        if draw(st.booleans()):
            headers.append(b"Content-Type: image/png")
        if draw(st.booleans()):
            headers.insert(0, b"X-Extra:" + draw(st.sampled_from([b"", b" v", b"   v  "])))
        content = draw(st.binary(max_size=64)) + draw(st.sampled_from([b"", b"\r\n--", b"\r\n", b"--"]))
        if name == b"file":
            files.append(content)
        parts.append(b"--" + boundary + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + content + b"\r\n")
    body = b"".join(parts) + b"--" + boundary + b"--" + draw(st.sampled_from([b"", b"\r\n"]))
    changes = draw(st.integers(0, 3))
    for _ in range(changes):
        at = draw(st.integers(0, len(body)))
        change = draw(st.sampled_from([b"", b"\r", b"\n", b"-", b" ", b":", b"\r\n", b'"', b"x"]))
        body = body[:at] + change + body[at + draw(st.integers(0, 2)) :]
    # A content holding the delimiter by chance is a different body than the one drawn.
    plain = changes == 0 and files and not any(b"\r\n--" + boundary in f + b"\r\n" for f in files)
    return body, boundary, files if plain else None


@settings(max_examples=EXAMPLES * 10, deadline=None)
@given(bodies())
def test_slicing_agrees_with_python_multipart(case: tuple[bytes, bytes, list[bytes] | None]) -> None:
    body, boundary, plain_files = case
    sliced = _plain_file_parts(body, boundary)
    if plain_files is not None:
        assert sliced == plain_files
    if sliced is not None:
        assert sliced == _parsed_file_parts(body, boundary)
    else:  # the full parser reads it or words why not
        try:
            _parsed_file_parts(body, boundary)
        except InvalidRequest as error:
            message = error.message
        else:
            message = "malformed multipart body: none"
        assert message.startswith(("malformed multipart body", "the 'file' part"))


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4, 5])
def test_count_exceeds_counts_what_bytes_count_does_across_steps(offset: int) -> None:
    step = COUNT_STEP_BYTES
    body = b"x" * (step - offset) + b"--abc" + b"y" * step + b"--abc" * 3 + b"z" * (step - 7) + b"--abc"
    assert body.count(b"--abc") == 5
    assert count_exceeds(body, b"--abc", 4)
    assert not count_exceeds(body, b"--abc", 5)


def _json_body(text: str) -> bytes:
    return json.dumps({"image": text}).encode()


# What `base64 FILE` (76 columns), `openssl base64` (64) and Python's encodebytes write: MIME line breaks.
WRAPPED = {
    "LF every 76": base64.encodebytes(IMAGE * 3).decode(),
    "CRLF every 64": "\r\n".join(base64.b64encode(IMAGE * 3).decode()[i : i + 64] for i in range(0, 400, 64)),
    "a trailing newline": base64.b64encode(IMAGE).decode() + "\n",
}


@pytest.mark.parametrize("name", list(WRAPPED))
def test_base64_with_line_breaks_is_decoded(name: str) -> None:
    text = WRAPPED[name]
    assert json_images(_json_body(text), 4).images == [base64.b64decode("".join(text.split()))]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("aGVs-G8_", "character '-' at position 4"),  # URL-safe base64
        ("aGVsbG8 gd29ybGQ=%", "character '%' at position 17"),
        ("aGVsbG8", "length"),
    ],
)
def test_what_is_wrong_with_base64_is_named(text: str, words: str) -> None:
    with pytest.raises(InvalidImage, match=f"image 0 is not valid base64: .*{words}"):
        json_images(_json_body(text), 4)


def test_a_file_part_named_by_rfc_5987_filename_star_is_a_file() -> None:
    """Some clients write a non-ASCII file name only as ``filename*=UTF-8''…``: still a file upload."""
    body = (
        b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename*=UTF-8''%C3%A9t%C3%A9.png\r\n"
        b"Content-Type: image/png\r\n\r\n" + IMAGE + b"\r\n--b--\r\n"
    )
    assert multipart_files(body, b"multipart/form-data; boundary=b", 4) == [IMAGE]
    assert _parsed_file_parts(body.replace(b"\r\n--b--", b"\r\n--b--\r\nepilogue"), b"b") == [IMAGE]
