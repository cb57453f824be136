"""The v2 wire format against tritonclient's own request builder and response parser: the bytes a real
Triton client sends are parsed, and the bytes Glimpse answers are read back by that client."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from app.errors import InvalidRequest
from app.transports.v2.codec import (
    HEADER_LENGTH,
    OutputTensor,
    encode_infer_response,
    header_length,
    parse_infer_request,
)

Client = triton.InferenceServerClient


def triton_body(
    inputs: list[triton.InferInput],
    outputs: list[triton.InferRequestedOutput] | None = None,
    **kwargs: Any,
) -> tuple[bytes, int | None]:
    body, json_size = Client.generate_request_body(inputs, outputs=outputs, **kwargs)
    return bytes(body), json_size


def bytes_input(name: str, elements: list[bytes], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def test_binary_bytes_elements_as_tritonclient_sends_them() -> None:
    elements = [b"\x89PNG\x00\xff raw", b"", b"x" * 70000]
    body, json_size = triton_body([bytes_input("image", elements, binary=True)], request_id="42")
    assert json_size is not None  # tritonclient's default for BYTES is the binary extension
    request = parse_infer_request(body, json_size)
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape, tensor.binary) == ("image", "BYTES", (3,), True)
    assert tensor.data == elements
    assert request.id == "42"
    assert request.outputs is None


def test_json_bytes_elements_are_utf8_strings() -> None:
    body, json_size = triton_body([bytes_input("image", [b"aGVsbG8=", b"d29ybGQ="], binary=False)])
    assert json_size is None
    (tensor,) = parse_infer_request(body, None).inputs
    assert tensor.data == [b"aGVsbG8=", b"d29ybGQ="]
    assert tensor.binary is False


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", ["UINT8", "INT32", "FP32", "FP64", "BOOL", "INT64", "FP16"])
def test_numeric_tensors_in_both_forms(datatype: str, binary: bool) -> None:
    dtype = triton.triton_to_np_dtype(datatype)
    values = (np.arange(24).reshape(2, 3, 4) % (2 if datatype == "BOOL" else 200)).astype(dtype)
    tensor = triton.InferInput("pixels", list(values.shape), datatype)
    tensor.set_data_from_numpy(values, binary_data=binary)
    body, json_size = triton_body([tensor])
    (parsed,) = parse_infer_request(body, json_size).inputs
    assert isinstance(parsed.data, np.ndarray)
    np.testing.assert_array_equal(parsed.data, values)
    assert parsed.data.shape == (2, 3, 4)


def test_requested_outputs_with_binary_flags_and_parameters() -> None:
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("label", binary_data=False),
    ]
    body, json_size = triton_body(
        [bytes_input("image", [b"a"], binary=True)], outputs, parameters={"target": "3", "kind": "attention"}
    )
    request = parse_infer_request(body, json_size)
    assert request.outputs is not None
    assert [(o.name, o.binary) for o in request.outputs] == [("probabilities", True), ("label", False)]
    assert request.parameters["target"] == "3"
    assert request.parameters["kind"] == "attention"


def test_binary_data_output_is_the_default_an_output_overrides() -> None:
    header = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["YQ=="]}],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "label"}, {"name": "heatmap", "parameters": {"binary_data": False}}],
    }
    request = parse_infer_request(json.dumps(header).encode(), None)
    assert request.outputs is not None
    assert [(o.name, o.binary) for o in request.outputs] == [("label", True), ("heatmap", False)]


def test_nested_json_data_is_read_row_major() -> None:
    header = {
        "inputs": [{"name": "pixels", "shape": [1, 2, 2], "datatype": "UINT8", "data": [[[1, 2], [3, 4]]]}]
    }
    (tensor,) = parse_infer_request(json.dumps(header).encode(), None).inputs
    assert isinstance(tensor.data, np.ndarray)
    assert tensor.data.tolist() == [[[1, 2], [3, 4]]]


def test_the_response_is_read_back_by_tritonclient_in_both_forms() -> None:
    probabilities = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    heatmap = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for binary in (True, False):
        outputs = [
            OutputTensor("probabilities", "FP32", (2, 2), probabilities, binary),
            OutputTensor("label", "BYTES", (2,), [b"1", "seven ✓".encode()], binary),
            OutputTensor("heatmap", "UINT8", (2, 3, 4), heatmap, not binary),  # one form of each
        ]
        body, headers = encode_infer_response("glimpse-m", "1.1.0", "req-9", outputs)
        length = headers.get(HEADER_LENGTH)
        result = Client.parse_response_body(body, header_length=int(length) if length else None)
        np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
        labels = result.as_numpy("label").tolist()  # tritonclient gives JSON BYTES as str, binary as bytes
        assert [x if isinstance(x, bytes) else x.encode() for x in labels] == [b"1", "seven ✓".encode()]
        np.testing.assert_array_equal(result.as_numpy("heatmap"), heatmap)
        response = result.get_response()
        assert (response["model_name"], response["model_version"], response["id"]) == (
            "glimpse-m",
            "1.1.0",
            "req-9",
        )


def test_binary_response_headers_follow_the_extension() -> None:
    output = OutputTensor("probabilities", "FP32", (1, 2), np.array([[0.5, 0.5]], np.float32), True)
    body, headers = encode_infer_response("m", "1", None, [output])
    length = int(headers[HEADER_LENGTH])
    assert headers["content-type"] == "application/octet-stream"
    document = json.loads(body[:length])
    assert document["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert "data" not in document["outputs"][0]
    assert body[length:] == np.array([0.5, 0.5], "<f4").tobytes()
    assert "id" not in document


def test_a_json_response_has_no_header_length() -> None:
    output = OutputTensor("label", "BYTES", (1,), [b"3"], False)
    body, headers = encode_infer_response("m", "1", None, [output])
    assert headers == {"content-type": "application/json"}
    assert json.loads(body)["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["3"]}
    ]


def binary_request(inputs: list[dict[str, Any]], tail: bytes) -> tuple[bytes, int]:
    header = json.dumps({"inputs": inputs}).encode()
    return header + tail, len(header)


BYTES_INPUT = {"name": "image", "shape": [1], "datatype": "BYTES"}
MALFORMED: list[tuple[str, bytes, int | None, str]] = [
    ("not json", b"{nope", None, "could not be parsed"),
    ("a list", b"[]", None, "JSON object"),
    ("no inputs", b"{}", None, "'inputs'"),
    ("input not an object", b'{"inputs": [3]}', None, "must be an object"),
    ("no name", b'{"inputs": [{"shape": [1], "datatype": "BYTES", "data": ["a"]}]}', None, "'name'"),
    ("bad datatype", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "STR", "data": ["a"]}]}', None,
     "unknown datatype"),
    ("negative shape", b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "BYTES", "data": []}]}', None,
     "non-negative"),
    ("shape of bools", b'{"inputs": [{"name": "x", "shape": [true], "datatype": "BYTES", "data": ["a"]}]}',
     None, "non-negative"),
    ("no data", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES"}]}', None, "neither"),
    ("count mismatch", b'{"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}', None,
     "holds 2 elements"),
    ("bytes not strings", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}]}',
     None,
     "must be strings"),
    ("uint8 out of range", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [256]}]}',
     None, "from 0 to 255"),
    ("uint8 fraction", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [1.5]}]}', None,
     "from 0 to 255"),
    ("uint8 string", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": ["1"]}]}', None,
     "must be numbers"),
    ("huge integer", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1e400]}]}', None,
     "could not be parsed"),
    ("twice", b'{"inputs": [{"name": "x", "shape": [0], "datatype": "BYTES", "data": []},'
     b' {"name": "x", "shape": [0], "datatype": "BYTES", "data": []}]}', None, "twice"),
    ("binary without header", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",'
     b' "parameters": {"binary_data_size": 5}}]}', None, "no Inference-Header-Content-Length"),
    ("outputs not a list", b'{"inputs": [{"name": "x", "shape": [0], "datatype": "BYTES", "data": []}],'
     b' "outputs": {}}', None, "'outputs'"),
    ("output twice", b'{"inputs": [{"name": "x", "shape": [0], "datatype": "BYTES", "data": []}],'
     b' "outputs": [{"name": "a"}, {"name": "a"}]}', None, "twice"),
    ("binary_data not a bool", b'{"inputs": [{"name": "x", "shape": [0], "datatype": "BYTES", "data": []}],'
     b' "outputs": [{"name": "a", "parameters": {"binary_data": "yes"}}]}', None, "true or false"),
    ("parameters not an object", b'{"inputs": [{"name": "x", "shape": [0], "datatype": "BYTES", "data": []}],'
     b' "parameters": [1]}', None, "must be an object"),
    ("id not a string",
     b'{"id": 5, "inputs": [{"name": "x", "shape": [0], "datatype": "BYTES", "data": []}]}',
     None, "'id'"),
    ("size past the end", *binary_request([{**BYTES_INPUT, "parameters": {"binary_data_size": 50}}],
     struct.pack("<I", 1) + b"a"), "runs past the end"),
    ("bytes left over", *binary_request([{**BYTES_INPUT, "parameters": {"binary_data_size": 5}}],
     struct.pack("<I", 1) + b"a" + b"junk"), "add up to 5"),
    ("element past its size", *binary_request([{**BYTES_INPUT, "parameters": {"binary_data_size": 5}}],
     struct.pack("<I", 9) + b"a"), "runs past its binary_data_size"),
    ("cut length", *binary_request([{**BYTES_INPUT, "parameters": {"binary_data_size": 6}}],
     struct.pack("<I", 1) + b"a" + b"\x00"), "inside an element's length"),
    ("element count", *binary_request([{**BYTES_INPUT, "parameters": {"binary_data_size": 10}}],
     (struct.pack("<I", 1) + b"a") * 2), "holds 1 elements but the binary data has 2"),
    ("numeric size", *binary_request([{"name": "p", "shape": [2, 2], "datatype": "FP32",
     "parameters": {"binary_data_size": 4}}], b"\x00" * 4), "takes 16 bytes"),
    ("bool byte", *binary_request([{"name": "p", "shape": [1], "datatype": "BOOL",
     "parameters": {"binary_data_size": 1}}], b"\x07"), "0 or 1"),
    ("negative size", *binary_request([{**BYTES_INPUT, "parameters": {"binary_data_size": -1}}], b""),
     "non-negative integer"),
    ("data and size", *binary_request([{**BYTES_INPUT, "data": ["a"], "parameters": {"binary_data_size": 0}}],
     b""), "both"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "length", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_requests_say_what_is_wrong(body: bytes, length: int | None, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_infer_request(body, length)


@pytest.mark.parametrize("value", ["abc", "0", "-4", "1000"])
def test_header_length_must_fit_the_body(value: str) -> None:
    with pytest.raises(InvalidRequest, match="Inference-Header-Content-Length"):
        header_length(value, 100)


def test_deep_nesting_is_no_recursion_error() -> None:
    deep = "[" * 5000 + "]" * 5000
    body = ('{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": ' + deep + "}]}").encode()
    with pytest.raises(InvalidRequest):
        parse_infer_request(body, None)
