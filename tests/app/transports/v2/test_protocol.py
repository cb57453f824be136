"""Glimpse's inputs, outputs and parameters through the v2 protocol: requests as tritonclient builds them,
checked against the model card and the API's limits; answers read back by tritonclient."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from app.errors import (
    GlimpseError,
    ImageTooLarge,
    ImageTooSmall,
    InvalidParameter,
    InvalidRequest,
    TooManyImages,
)
from app.transports.v2.codec import HEADER_LENGTH, parse_infer_request
from app.transports.v2.protocol import (
    Limits,
    V2Query,
    check_heatmap_sizes,
    encode_answers,
    model_metadata,
    read_query,
    server_metadata,
)
from models.checkpoint import DEFAULT_MODEL_DIR, ModelCard, read_card

LIMITS = Limits(max_images=4, max_image_pixels=100 * 100, min_image_size=16)
Client = triton.InferenceServerClient


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return read_card(DEFAULT_MODEL_DIR)


def query_of(
    card: ModelCard,
    inputs: list[triton.InferInput],
    outputs: list[triton.InferRequestedOutput] | None = None,
    parameters: dict[str, Any] | None = None,
) -> V2Query:
    body, json_size = Client.generate_request_body(inputs, outputs=outputs, parameters=parameters)
    return read_query(parse_infer_request(bytes(body), json_size), card, LIMITS)


def images_input(elements: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def pixels_input(array: np.ndarray[Any, Any], datatype: str = "UINT8") -> triton.InferInput:
    tensor = triton.InferInput("pixels", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_binary_images_are_passed_through(card: ModelCard) -> None:
    query = query_of(card, [images_input([b"png one", b"png two"])])
    assert query.images == [b"png one", b"png two"]
    # tritonclient asks for every output as binary data when it names none (binary_data_output)
    assert query.outputs == [("probabilities", True), ("label", True), ("heatmap", True)]
    assert (query.query.top_k, query.query.target, query.query.kind) == (10, None, "evidence")
    assert query.operation == "attention-map"  # the heatmap is among the outputs


def test_one_image_per_row_as_a_batching_triton_model_takes_it(card: ModelCard) -> None:
    tensor = triton.InferInput("image", [2, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"one"], [b"two"]], dtype=np.object_))
    assert query_of(card, [tensor]).images == [b"one", b"two"]


def test_json_images_are_base64(card: ModelCard) -> None:
    encoded = [base64.b64encode(b"\x89PNG\x00data")]
    query = query_of(card, [images_input(encoded, binary=False)])
    assert query.images == [b"\x89PNG\x00data"]


def test_json_images_in_wrapped_base64(card: ModelCard) -> None:
    """What `base64 FILE` writes without -w0: line breaks every 76 characters."""
    encoded = [base64.encodebytes(b"\x89PNG\x00data" * 20)]
    assert query_of(card, [images_input(encoded, binary=False)]).images == [b"\x89PNG\x00data" * 20]


def test_json_image_that_is_not_base64(card: ModelCard) -> None:
    with pytest.raises(InvalidRequest, match=r"image 1: .* base64"):
        query_of(card, [images_input([base64.b64encode(b"ok"), b"not base64!"], binary=False)])
    with pytest.raises(InvalidRequest, match=r"image 0: .* character '_' at position 0"):
        query_of(card, [images_input([b"_-_-"], binary=False)])


@pytest.mark.parametrize("shape", [(2, 20, 30), (2, 20, 30, 1), (2, 20, 30, 3), (1, 20, 30, 4)])
def test_pixels_become_one_array_per_image(card: ModelCard, shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    query = query_of(card, [pixels_input(array)])
    assert len(query.images) == shape[0]
    for image, expected in zip(query.images, array, strict=True):
        assert isinstance(image, np.ndarray)
        np.testing.assert_array_equal(image, expected)


def test_requested_outputs_and_map_parameters(card: ModelCard) -> None:
    outputs = [
        triton.InferRequestedOutput("heatmap"),
        triton.InferRequestedOutput("label", binary_data=False),
    ]
    query = query_of(card, [images_input([b"x"])], outputs, parameters={"target": "2", "kind": "attention"})
    assert query.outputs == [("heatmap", True), ("label", False)]
    assert (query.query.target, query.query.kind) == ("2", "attention")


def test_the_heatmap_outputs_parameters_win(card: ModelCard) -> None:
    """tritonclient's HTTP outputs carry no parameters; other clients' may."""
    document = {
        "inputs": [ONE],
        "parameters": {"target": "2", "kind": "attention"},
        "outputs": [{"name": "heatmap", "parameters": {"target": "7"}}],
    }
    query = read_query(parse_infer_request(json.dumps(document).encode(), None), card, LIMITS)
    assert (query.query.target, query.query.kind) == ("7", "attention")


ONE = {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["YQ=="]}  # one image, "a" in base64
BAD: list[tuple[str, dict[str, Any], type[GlimpseError], str]] = [
    ("unknown input", {"inputs": [{"name": "img", "shape": [1], "datatype": "BYTES", "data": ["YQ=="]}]},
     InvalidRequest, "unknown input 'img'"),
    ("both inputs", {"inputs": [ONE,
                                {"name": "pixels", "shape": [1, 1, 1], "datatype": "UINT8", "data": [1]}]},
     InvalidRequest, "not both"),
    ("image as uint8", {"inputs": [{"name": "image", "shape": [1], "datatype": "UINT8", "data": [1]}]},
     InvalidRequest, "must be BYTES of shape"),
    ("image of [1, 2]",
     {"inputs": [{"name": "image", "shape": [1, 2], "datatype": "BYTES", "data": ["YQ=="] * 2}]},
     InvalidRequest, "must be BYTES of shape"),
    ("no images", {"inputs": [{"name": "image", "shape": [0], "datatype": "BYTES", "data": []}]},
     InvalidRequest, "holds no images"),
    ("too many images",
     {"inputs": [{"name": "image", "shape": [5], "datatype": "BYTES", "data": ["YQ=="] * 5}]},
     TooManyImages, "5 images in one request; the limit is 4"),
    ("pixels as fp32", {"inputs": [{"name": "pixels", "shape": [1, 16, 16], "datatype": "FP32",
                                    "data": [0.0] * 256}]}, InvalidRequest, "must be UINT8"),
    ("pixels of rank 2",
     {"inputs": [{"name": "pixels", "shape": [16, 16], "datatype": "UINT8", "data": [0] * 256}]},
     InvalidRequest, "must be UINT8 of shape"),
    ("two channels", {"inputs": [{"name": "pixels", "shape": [1, 16, 16, 2], "datatype": "UINT8",
                                  "data": [0] * 512}]}, InvalidRequest, "C 1, 3 or 4"),
    ("pixels too small", {"inputs": [{"name": "pixels", "shape": [1, 8, 40], "datatype": "UINT8",
                                      "data": [0] * 320}]}, ImageTooSmall, "at least 16"),
    ("pixels too large", {"inputs": [{"name": "pixels", "shape": [1, 101, 100], "datatype": "UINT8",
                                      "data": [0] * 10100}]}, ImageTooLarge, "the limit is 10000"),
    ("unknown output", {"inputs": [ONE],
                        "outputs": [{"name": "logits"}]}, InvalidRequest, "unknown output 'logits'"),
    ("empty outputs", {"inputs": [ONE],
                       "outputs": []}, InvalidRequest, "'outputs' is empty"),
    ("unknown target", {"inputs": [ONE],
                        "parameters": {"target": "cat"}}, InvalidParameter, "one of the model's labels"),
    ("target as a number", {"inputs": [ONE],
                            "parameters": {"target": 3}}, InvalidParameter, "target must be a string, got 3"),
    ("unknown kind", {"inputs": [ONE],
                      "outputs": [{"name": "heatmap", "parameters": {"kind": "gradcam"}}]},
     InvalidParameter, "kind must be one of 'evidence', 'attention', got 'gradcam'"),
]  # fmt: skip


@pytest.mark.parametrize(("document", "error", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_requests_this_model_cannot_take(
    card: ModelCard, document: dict[str, Any], error: type[GlimpseError], message: str
) -> None:
    request = parse_infer_request(json.dumps(document).encode(), None)
    with pytest.raises(error, match=message) as raised:
        read_query(request, card, LIMITS)
    assert 400 <= raised.value.status_code < 500


def test_heatmaps_of_several_sizes_are_refused(card: ModelCard) -> None:
    query = query_of(card, [images_input([b"a", b"b"])])
    check_heatmap_sizes(query, [(20, 20), (20, 20)])
    with pytest.raises(InvalidRequest, match="must share one size; got 20×20, 30×20"):
        check_heatmap_sizes(query, [(20, 20), (30, 20)])
    labels_only = query_of(card, [images_input([b"a", b"b"])], [triton.InferRequestedOutput("label")])
    check_heatmap_sizes(labels_only, [(20, 20), (30, 20)])
    assert labels_only.operation == "predict"  # no map is drawn when no heatmap is asked for


@pytest.mark.parametrize("binary", [True, False])
def test_answers_read_back_by_tritonclient(card: ModelCard, binary: bool) -> None:
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary)
        for name in ("label", "probabilities", "heatmap")
    ]
    query = query_of(card, [images_input([b"a", b"b"])], outputs)
    probabilities = np.zeros((2, 10), np.float32)
    probabilities[0, 3], probabilities[1, 9] = 1.0, 1.0
    heatmaps = [np.full((20, 30), 7, np.uint8), np.full((20, 30), 9, np.uint8)]
    body, headers = encode_answers(query, card, probabilities, heatmaps)
    length = headers.get(HEADER_LENGTH)
    result = Client.parse_response_body(body, header_length=int(length) if length else None)
    labels = result.as_numpy("label").tolist()  # tritonclient gives JSON BYTES as str, binary as bytes
    assert [x if isinstance(x, bytes) else x.encode() for x in labels] == [b"3", b"9"]
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
    np.testing.assert_array_equal(result.as_numpy("heatmap"), np.stack(heatmaps))
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["label", "probabilities", "heatmap"]
    assert (response["model_name"], response["model_version"]) == (card.name, card.version)


def test_only_requested_outputs_are_answered(card: ModelCard) -> None:
    query = query_of(card, [images_input([b"a"])], [triton.InferRequestedOutput("label", binary_data=False)])
    body, headers = encode_answers(query, card, np.eye(10, dtype=np.float32)[[4]], None)
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["4"]}
    ]


def test_metadata(card: ModelCard) -> None:
    assert server_metadata("0.1.0") == {
        "name": "glimpse",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    metadata = model_metadata(card)
    assert (metadata["name"], metadata["versions"]) == (card.name, [card.version])
    assert {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]} == {
        "image": ("BYTES", [-1]),
        "pixels": ("UINT8", [-1, -1, -1, -1]),
    }
    assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
        "probabilities": ("FP32", [-1, 10]),
        "label": ("BYTES", [-1]),
        "heatmap": ("UINT8", [-1, -1, -1]),
    }
    assert metadata["parameters"]["labels"] == card.labels
