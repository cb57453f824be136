"""The v2 routes under hostile input, against the real session server: the whole image corpus, malformed
wire formats, limits, keys, and schemathesis over the protocol's OpenAPI operations. Every answer is
the protocol's ``{"error": "<message>"}`` with a 4xx, never a 5xx; the server keeps serving."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from models.checkpoint import DEFAULT_MODEL_DIR, read_card
from tests.hardening.test_inputs import CLEAN_INDEX, IMAGES
from tests.helpers import E2E_API_KEY, b64

CARD = read_card(DEFAULT_MODEL_DIR)
INFER = f"/v2/models/{CARD.name}/infer"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100")) // 2  # nine operations: half the budget each


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"X-API-Key": E2E_API_KEY}, timeout=30) as client:
        yield client


def binary_request(images: list[bytes], outputs: list[str] | None = None) -> dict[str, Any]:
    """httpx arguments for an infer request with the images as binary BYTES, as tritonclient sends it."""
    tail = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header: dict[str, Any] = {
        "inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tail)}}],
    }  # fmt: skip
    if outputs is not None:
        header["outputs"] = [{"name": name} for name in outputs]
    document = json.dumps(header).encode()
    return {"content": document + tail, "headers": {"Inference-Header-Content-Length": str(len(document))}}


def json_request(document: Any) -> dict[str, Any]:
    return {"content": json.dumps(document).encode(), "headers": {"Content-Type": "application/json"}}


def assert_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert words in body["error"], body["error"]
    assert "Traceback" not in response.text


@pytest.fixture(scope="module")
def still_serving(http: httpx.Client, canvas_png: Callable[[int], bytes]) -> Callable[[], None]:
    clean = canvas_png(CLEAN_INDEX)

    def check() -> None:
        response = http.post(INFER, **binary_request([clean], ["label"]))
        assert response.status_code == 200, response.text

    return check


@pytest.mark.parametrize("name", list(IMAGES))
def test_the_image_corpus_gets_our_apis_statuses(
    http: httpx.Client, still_serving: Callable[[], None], name: str
) -> None:
    data, status, _ = IMAGES[name]
    as_binary = http.post(INFER, **binary_request([data]))
    inputs = [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(data)]}]
    as_json = http.post(INFER, **json_request({"inputs": inputs}))
    for response in (as_binary, as_json):
        assert response.status_code == status, (name, response.text)
        if status != 200:
            assert set(response.json()) == {"error"}
    if status == 200:
        names = [output["name"] for output in as_binary.json()["outputs"]]  # JSON unless asked otherwise
        assert names == ["probabilities", "label", "heatmap"]
    still_serving()


def test_an_image_of_several_is_named(http: httpx.Client, canvas_png: Callable[[int], bytes]) -> None:
    response = http.post(INFER, **binary_request([canvas_png(1), b"not an image"]))
    assert_error(response, 415, "image 1: ")


def _pixels(shape: list[int], size: int) -> dict[str, Any]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": shape,
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    return {
        "content": header + b"\0" * size,
        "headers": {"Inference-Header-Content-Length": str(len(header))},
    }


def _json_pixels(shape: list[int], data: list[int]) -> dict[str, Any]:
    return json_request({"inputs": [{"name": "pixels", "shape": shape, "datatype": "UINT8", "data": data}]})


ONE = {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["YQ=="]}
LENGTH = "Inference-Header-Content-Length"
HOSTILE: dict[str, tuple[dict[str, Any], int, str]] = {
    "not json": ({"content": b"{nope"}, 400, "could not be parsed"),
    "json list": (json_request([ONE]), 400, "JSON object"),
    "no inputs": (json_request({"outputs": [{"name": "label"}]}), 400, "'inputs'"),
    "deeply nested": ({"content": b"[" * 100_000}, 400, "could not be parsed"),
    "header length not a number": ({"content": b"{}", "headers": {LENGTH: "x"}}, 400, LENGTH),
    "header length past the body": ({"content": b"{}", "headers": {LENGTH: "99"}}, 400, "body has 2 bytes"),
    "binary size past the body": (
        {**_pixels([1, 16, 16], 256), "content": _pixels([1, 16, 16], 256)["content"][:-9]},
        400, "runs past the end",
    ),
    "huge declared pixels, no data": (_pixels([1, 100_000, 100_000], 0), 400, "takes 10000000000 bytes"),
    "huge declared json pixels": (_json_pixels([1, 2**40, 2**40], [0]), 400, "holds 12089258196146291747"),
    "pixels over the body limit": (_pixels([1, 600, 600], 360_000), 413, "the limit is 300000"),
    "too many pixel images": (_pixels([5, 16, 16], 5 * 256), 413, "5 images in one request; the limit is 4"),
    "pixels too small": (_pixels([1, 8, 8], 64), 400, "at least 16"),
    "pixel out of range": (_json_pixels([1, 16, 16], [300] * 256), 400, "from 0 to 255"),
    "five images": (json_request({"inputs": [{**ONE, "shape": [5], "data": ["YQ=="] * 5}]}), 413,
                    "5 images in one request"),
    "body over the limit": ({"content": b"{" + b" " * 400_000 + b"}"}, 413, "300000"),
    "unknown input": (json_request({"inputs": [{**ONE, "name": "input0"}]}), 400, "unknown input 'input0'"),
    "unknown output": (json_request({"inputs": [ONE], "outputs": [{"name": "logits"}]}), 400, "'logits'"),
    "unknown target": (json_request({"inputs": [ONE], "parameters": {"target": "dog"}}), 422, "got 'dog'"),
    "unknown kind": (json_request({"inputs": [ONE], "parameters": {"kind": "gradcam"}}), 422, "'gradcam'"),
    "base64 that is not": (json_request({"inputs": [{**ONE, "data": ["%%%%"]}]}), 400, "base64"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_requests(http: httpx.Client, still_serving: Callable[[], None], name: str) -> None:
    arguments, status, words = HOSTILE[name]
    assert_error(http.post(INFER, **arguments), status, words)
    still_serving()


def test_heatmaps_of_several_sizes(http: httpx.Client, canvas_png: Callable[[int], bytes]) -> None:
    from tests.helpers import png_bytes

    other = png_bytes(np.zeros((20, 30), dtype=np.uint8))
    assert_error(http.post(INFER, **binary_request([canvas_png(1), other])), 400, "must share one size")
    assert http.post(INFER, **binary_request([canvas_png(1), other], ["label"])).status_code == 200


def test_models_unknown_versions_methods_and_keys(http: httpx.Client, server: str) -> None:
    assert_error(http.get("/v2/models/resnet"), 404, "unknown model 'resnet'")
    assert_error(http.get(f"/v2/models/{CARD.name}/versions/9"), 404, "version '9'")
    assert_error(http.post(f"/v2/models/{CARD.name}/versions/9/infer", json={}), 404, "version '9'")
    assert_error(http.get(INFER), 405, "GET is not allowed")
    assert_error(httpx.get(f"{server}/v2/models/{CARD.name}"), 401, "missing API key")
    assert_error(httpx.get(f"{server}/v2/models/{CARD.name}/ready"), 401, "missing API key")
    assert_error(httpx.post(f"{server}{INFER}", headers={"X-API-Key": "no"}), 401, "invalid API key")
    for open_path in ("/v2", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(f"{server}{open_path}").status_code == 200


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_v2_operations_never_answer_5xx(server: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    operations = [operation for operation in operations if operation.path.startswith("/v2")]
    assert len(operations) == 9

    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        @given(case=operation.as_strategy(mode))
        def call(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=server, headers={"X-API-Key": E2E_API_KEY}, timeout=30)
            case.validate_response(response, checks=[not_a_server_error])
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error"}, response.text
                assert isinstance(body["error"], str), response.text

        try:
            call()
        except Unsatisfiable:  # no invalid request exists for an operation without parameters
            assert mode is GenerationMode.NEGATIVE
