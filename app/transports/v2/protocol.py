"""What Glimpse's model looks like through the Open Inference Protocol: its inputs, outputs, parameters
and metadata.

One input per request, either ``image`` (BYTES ``[N]``, each element one encoded image; base64 in JSON,
raw bytes with the binary extension; ``[N, 1]`` is read as ``[N]``) or ``pixels`` (UINT8 ``[N, H, W]``
or ``[N, H, W, C]``). Outputs:
``probabilities`` (FP32 ``[N, num_classes]`` in class-index order), ``label`` (BYTES ``[N]``, the top
class) and ``heatmap`` (UINT8 ``[N, H, W]``, the map ``/attention-map`` draws, as raw pixels); the
request's ``outputs`` choose among them, all by default. ``target`` (a label) and ``kind`` (``evidence``
or ``attention``) choose the heatmap, as request parameters or as the ``heatmap`` output's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.errors import ImageTooLarge, ImageTooSmall, InvalidParameter, InvalidRequest, TooManyImages
from app.pipeline.query import MAP_KINDS, Operation, Query, query_from_values
from app.pipeline.uploads import decode_base64
from app.transports.v2.codec import InferRequest, InputTensor, OutputTensor, encode_infer_response
from models.checkpoint import ModelCard

IMAGE, PIXELS = "image", "pixels"
PROBABILITIES, LABEL, HEATMAP = "probabilities", "label", "heatmap"
OUTPUTS = (PROBABILITIES, LABEL, HEATMAP)
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "pytorch"
PIXEL_CHANNELS = (1, 3, 4)  # a pixels tensor's C: grey, RGB, RGBA


@dataclass(frozen=True, slots=True)
class Limits:
    """The API's limits, as numbers: the same for the v2 routes as for ``/predict``."""

    max_images: int
    max_image_pixels: int
    min_image_size: int


@dataclass(frozen=True, slots=True)
class V2Query:
    """A validated infer request: the images, what to answer, and the request core's query for them.

    Attributes:
        images: The ``image`` input's encoded files, or the ``pixels`` input as one (H, W) or (H, W, C)
            array per image: what :meth:`app.pipeline.core.Pipeline.infer` takes.
        outputs: Names of the outputs to send, in order, each with whether it goes as binary data.
        query: Every class (``top_k`` = number of classes), and the heatmap's ``target`` and ``kind``.
        id: The request's id, sent back in the response.
    """

    images: list[bytes] | list[NDArray[np.uint8]]
    outputs: list[tuple[str, bool]]
    query: Query
    id: str | None

    @property
    def wants_heatmap(self) -> bool:
        return any(name == HEATMAP for name, _ in self.outputs)

    @property
    def operation(self) -> Operation:
        """The core's operation: a map is drawn only when the heatmap output is asked for."""
        return "attention-map" if self.wants_heatmap else "predict"


def read_query(request: InferRequest, card: ModelCard, limits: Limits) -> V2Query:
    """Check an infer request against the model's inputs, outputs and parameters and the API's limits.

    Raises:
        InvalidRequest: An unknown, missing or doubled input or output, or a datatype or shape this
            model does not take.
        InvalidParameter: An unknown ``target`` or ``kind``.
        TooManyImages, ImageTooLarge, ImageTooSmall: Past the limits, before any decoding.
    """
    unknown = [tensor.name for tensor in request.inputs if tensor.name not in (IMAGE, PIXELS)]
    if unknown:
        raise InvalidRequest(
            f"unknown input {unknown[0]!r}: this model takes 'image' (BYTES [N], encoded images) or "
            "'pixels' (UINT8 [N, H, W] or [N, H, W, C])"
        )
    if len(request.inputs) != 1:
        raise InvalidRequest("send either the 'image' input or the 'pixels' input, not both")
    tensor = request.inputs[0]
    outputs = _outputs(request)
    query = _core_query(request, card)
    images = _images(tensor, limits) if tensor.name == IMAGE else _pixels(tensor, limits)
    return V2Query(images, outputs, query, request.id)


def encode_answers(
    query: V2Query,
    card: ModelCard,
    probabilities: NDArray[np.float32],
    heatmaps: list[NDArray[np.uint8]] | None,
) -> tuple[bytes, dict[str, str]]:
    """The infer response: ``probabilities`` is ``[N, num_classes]`` in class order; ``heatmaps`` one
    ``[H, W]`` map per image (needed only when the query asks for the heatmap output)."""
    tensors: list[OutputTensor] = []
    for name, binary in query.outputs:
        if name == PROBABILITIES:
            tensors.append(OutputTensor(name, "FP32", probabilities.shape, probabilities, binary))
        elif name == LABEL:
            labels = [card.labels[int(index)].encode("utf-8") for index in probabilities.argmax(axis=1)]
            tensors.append(OutputTensor(name, "BYTES", (len(labels),), labels, binary))
        else:
            assert heatmaps is not None
            tensors.append(OutputTensor(name, "UINT8", _stack_shape(heatmaps), _stack(heatmaps), binary))
    return encode_infer_response(card.name, card.version, query.id, tensors)


def server_metadata(version: str) -> dict[str, Any]:
    """``GET /v2``: the ``$metadata_server_response``."""
    return {"name": "glimpse", "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(card: ModelCard) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the ``$metadata_model_response``; the labels (class-index order of
    ``probabilities``) and the map kinds are in its parameters."""
    return {
        "name": card.name,
        "versions": [card.version],
        "platform": PLATFORM,
        "inputs": [
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS, "datatype": "UINT8", "shape": [-1, -1, -1, -1]},
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(card.labels)]},
            {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
            {"name": HEATMAP, "datatype": "UINT8", "shape": [-1, -1, -1]},
        ],
        "parameters": {"labels": list(card.labels), "kinds": list(MAP_KINDS), "default_kind": Query().kind},
    }


# -- reading ----------------------------------------------------------------------------------------
def _outputs(request: InferRequest) -> list[tuple[str, bool]]:
    if request.outputs is None:
        return [(name, request.binary_output) for name in OUTPUTS]
    if not request.outputs:
        raise InvalidRequest(
            f"'outputs' is empty: name at least one of {', '.join(OUTPUTS)}, or leave it out"
        )
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise InvalidRequest(f"unknown output {output.name!r}; this model gives {', '.join(OUTPUTS)}")
    return [(output.name, output.binary) for output in request.outputs]


def _core_query(request: InferRequest, card: ModelCard) -> Query:
    """The core's query: every class, and ``target`` and ``kind`` read by the API's own parameter rules
    (the heatmap output's parameters win over the request's)."""
    parameters = {k: v for k, v in request.parameters.items() if k in ("target", "kind")}
    for output in request.outputs or []:
        if output.name == HEATMAP:
            parameters.update({k: v for k, v in output.parameters.items() if k in ("target", "kind")})
    for name, value in parameters.items():
        if not isinstance(value, str):
            raise InvalidParameter(f"{name} must be a string, got {value!r}")
    pairs = [("top_k", str(len(card.labels))), *parameters.items()]
    return query_from_values(pairs, "attention-map", card.labels)


def _count(tensor: InputTensor, limits: Limits) -> int:
    count = tensor.shape[0] if tensor.shape else 0
    if count == 0:
        raise InvalidRequest(
            f"input {tensor.name!r} holds no images: its shape {list(tensor.shape)} has N = 0"
        )
    if count > limits.max_images:
        raise TooManyImages(f"{count} images in one request; the limit is {limits.max_images}")
    return count


def _images(tensor: InputTensor, limits: Limits) -> list[bytes]:
    # [N, 1] too: what a client of a batching Triton model with one image per row sends.
    if tensor.datatype != "BYTES" or tensor.shape[1:] not in ((), (1,)):
        raise InvalidRequest(
            "input 'image' must be BYTES of shape [N] (or [N, 1]), "
            f"got {tensor.datatype} {list(tensor.shape)}"
        )
    _count(tensor, limits)
    assert isinstance(tensor.data, list)
    if tensor.binary:
        return tensor.data
    images = []
    for index, element in enumerate(tensor.data):
        try:
            images.append(decode_base64(element))
        except ValueError as exc:
            raise InvalidRequest(
                f"image {index}: a BYTES element in JSON must be the image encoded as base64 "
                f"(or send it as binary data): {exc}"
            ) from None
    return images


def _pixels(tensor: InputTensor, limits: Limits) -> list[NDArray[np.uint8]]:
    shape = tensor.shape
    if (
        tensor.datatype != "UINT8"
        or len(shape) not in (3, 4)
        or (len(shape) == 4 and shape[3] not in PIXEL_CHANNELS)
    ):
        raise InvalidRequest(
            f"input 'pixels' must be UINT8 of shape [N, H, W] or [N, H, W, C] with C 1, 3 or 4, "
            f"got {tensor.datatype} {list(shape)}"
        )
    _count(tensor, limits)
    height, width = shape[1], shape[2]
    if width * height > limits.max_image_pixels:
        raise ImageTooLarge(
            f"the images are {width}×{height} = {width * height} pixels; "
            f"the limit is {limits.max_image_pixels}"
        )
    if min(width, height) < limits.min_image_size:
        raise ImageTooSmall(
            f"the images are {width}×{height}; both sides must be at least {limits.min_image_size} pixels"
        )
    assert isinstance(tensor.data, np.ndarray)
    return list(tensor.data)  # (H, W) or (H, W, C) each: grey, RGB or RGBA, as the core reads them


# -- answering --------------------------------------------------------------------------------------
def _stack_shape(heatmaps: list[NDArray[np.uint8]]) -> tuple[int, ...]:
    return (len(heatmaps), *heatmaps[0].shape)


def _stack(heatmaps: list[NDArray[np.uint8]]) -> NDArray[np.uint8]:
    return np.stack(heatmaps)


def check_heatmap_sizes(query: V2Query, sizes: list[tuple[int, int]]) -> None:
    """One ``heatmap`` tensor needs one size.

    Raises:
        InvalidRequest: The query asks for the heatmap of images that differ in size.
    """
    if query.wants_heatmap and len(set(sizes)) > 1:
        listed = ", ".join(f"{w}×{h}" for w, h in sizes)
        raise InvalidRequest(
            f"the heatmap output is one [N, H, W] tensor, so its images must share one size; got {listed}. "
            "Send images of different sizes in separate requests, or leave the heatmap out"
        )
