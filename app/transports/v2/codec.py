"""The Open Inference Protocol's wire format: infer requests in, infer responses out.

Follows the KServe v2 REST specification (``$inference_request``, ``$inference_response``) and Triton's
binary tensor data extension: when ``Inference-Header-Content-Length`` is given, the body is that many
bytes of JSON followed by the tensors each input's ``binary_data_size`` announces, in input order;
a BYTES element is a 4-byte little-endian length and its bytes. Knows tensors, not models: what the
tensors mean is :mod:`app.transports.v2.protocol`'s business.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from app.errors import InvalidRequest

HEADER_LENGTH = "inference-header-content-length"  # the binary extension's header (lower case, as ASGI)
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

# The protocol's datatypes that hold numbers, as little-endian NumPy dtypes; BYTES is handled apart.
NUMERIC_DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = (*NUMERIC_DATATYPES, "BYTES")
_LENGTH = struct.Struct("<I")


@dataclass(slots=True)
class InputTensor:
    """One ``$request_input``: ``data`` is a list of bytes for BYTES, else an array of ``shape``.

    ``binary`` tells whether the data came as raw bytes (the binary extension) or as JSON: a JSON BYTES
    element is a string, so binary content (an image) travels base64-encoded in it.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: NDArray[Any] | list[bytes]
    binary: bool
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class RequestedOutput:
    """One ``$request_output``: its name, its parameters, and whether to send it as binary data."""

    name: str
    binary: bool
    parameters: dict[str, Any]


@dataclass(slots=True)
class InferRequest:
    """A parsed ``$inference_request``; ``outputs`` is None when the request names none (send all)."""

    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None
    parameters: dict[str, Any]
    id: str | None
    binary_output: bool  # the request's ``binary_data_output``: the default for every output


@dataclass(slots=True)
class OutputTensor:
    """One ``$response_output``: ``data`` is a list of bytes for BYTES, else an array of ``shape``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: NDArray[Any] | list[bytes]
    binary: bool


def header_length(value: str | None, body_size: int) -> int | None:
    """The ``Inference-Header-Content-Length`` header as a number of bytes (None when absent)."""
    if value is None:
        return None
    try:
        length = int(value.strip())
    except ValueError:
        raise InvalidRequest(
            f"Inference-Header-Content-Length must be a number of bytes, got {value!r}"
        ) from None
    if not 0 < length <= body_size:
        raise InvalidRequest(
            f"Inference-Header-Content-Length is {length} but the body has {body_size} bytes"
        )
    return length


def parse_infer_request(body: bytes, json_length: int | None) -> InferRequest:
    """Parse an infer request body; ``json_length`` is the binary extension's header, None for pure JSON.

    Raises:
        InvalidRequest: The JSON, a tensor's shape, datatype, data or binary size is malformed or the
            binary data does not add up to the body.
    """
    header = body if json_length is None else body[:json_length]
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request's JSON could not be parsed: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest("the request must be a JSON object with an 'inputs' list")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("the request must have a non-empty 'inputs' list")
    parameters = _parameters(document, "the request")
    binary = memoryview(body)[len(header) :]
    offset = 0
    inputs: list[InputTensor] = []
    for raw in raw_inputs:
        tensor, offset = _input(raw, binary, offset, json_length is not None)
        if any(existing.name == tensor.name for existing in inputs):
            raise InvalidRequest(f"input {tensor.name!r} is given twice")
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidRequest(
            f"the body has {len(binary)} bytes after the JSON header but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    binary_output = _flag(parameters, "binary_data_output", "the request")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("the request's 'id' must be a string")
    return InferRequest(inputs, _outputs(document, binary_output), parameters, request_id, binary_output)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[OutputTensor],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The ``$inference_response`` body and its headers: JSON, or JSON then binary data when any output
    asked for it (``Inference-Header-Content-Length`` then gives the JSON's length)."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if output.binary:
            chunk = _to_binary(output)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif isinstance(output.data, list):
            entry["data"] = [element.decode("utf-8", "backslashreplace") for element in output.data]
        else:
            entry["data"] = output.data.reshape(-1).tolist()
        entries.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = parameters
    document["outputs"] = entries
    header = orjson.dumps(document)
    if not chunks:
        return header, {"content-type": JSON_CONTENT_TYPE}
    headers = {"content-type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers


def error_body(message: str) -> bytes:
    """The protocol's error shape: ``{"error": "<message>"}``."""
    return orjson.dumps({"error": message})


# -- requests ----------------------------------------------------------------------------------------
def _input(raw: Any, binary: memoryview, offset: int, has_binary: bool) -> tuple[InputTensor, int]:
    if not isinstance(raw, dict):
        raise InvalidRequest("each entry of 'inputs' must be an object with name, shape and datatype")
    name = raw.get("name")
    if not isinstance(name, str):
        raise InvalidRequest("each input needs a 'name' string")
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidRequest(f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}")
    shape = _shape(raw.get("shape"), name)
    parameters = _parameters(raw, f"input {name!r}")
    count = math.prod(shape)
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise InvalidRequest(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
        return InputTensor(name, datatype, shape, _json_data(raw["data"], datatype, shape, count, name),
                           False, parameters), offset  # fmt: skip
    if not has_binary:
        raise InvalidRequest(
            f"input {name!r} has a binary_data_size but the request has no Inference-Header-Content-Length"
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
    if "data" in raw:
        raise InvalidRequest(f"input {name!r} has both 'data' and a binary_data_size")
    if offset + size > len(binary):
        raise InvalidRequest(
            f"input {name!r}: binary_data_size {size} runs past the end of the body "
            f"({len(binary) - offset} bytes left)"
        )
    chunk = binary[offset : offset + size]
    data = _binary_data(chunk, datatype, shape, count, name)
    return InputTensor(name, datatype, shape, data, True, parameters), offset + size


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in value
    ):
        raise InvalidRequest(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return tuple(value)


def _parameters(owner: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = owner.get("parameters", {})
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"{what}: 'parameters' must be an object")
    return parameters


def _flag(parameters: dict[str, Any], key: str, what: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what}: the {key} parameter must be true or false")
    return value


def _outputs(document: dict[str, Any], binary_output: bool) -> list[RequestedOutput] | None:
    raw_outputs = document.get("outputs")
    if raw_outputs is None:
        return None
    if not isinstance(raw_outputs, list):
        raise InvalidRequest("'outputs' must be a list of objects with a 'name'")
    outputs: list[RequestedOutput] = []
    for raw in raw_outputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InvalidRequest("each entry of 'outputs' must be an object with a 'name' string")
        name = raw["name"]
        if any(existing.name == name for existing in outputs):
            raise InvalidRequest(f"output {name!r} is requested twice")
        parameters = _parameters(raw, f"output {name!r}")
        binary = _flag(parameters, "binary_data", f"output {name!r}") if "binary_data" in parameters else None
        outputs.append(RequestedOutput(name, binary_output if binary is None else binary, parameters))
    return outputs


def _json_data(
    data: Any, datatype: str, shape: tuple[int, ...], count: int, name: str
) -> NDArray[Any] | list[bytes]:
    flat = _flatten(data, name)
    if len(flat) != count:
        raise InvalidRequest(
            f"input {name!r}: shape {list(shape)} holds {count} elements but 'data' has {len(flat)}"
        )
    if datatype == "BYTES":
        if not all(isinstance(element, str) for element in flat):
            raise InvalidRequest(f"input {name!r}: BYTES data in JSON must be strings")
        return [element.encode("utf-8") for element in flat]
    dtype = NUMERIC_DATATYPES[datatype]
    if count == 0:
        return np.zeros(shape, dtype)
    if not all(isinstance(element, bool | int | float) for element in flat):
        raise InvalidRequest(f"input {name!r}: {datatype} data must be numbers")
    try:
        values = np.asarray(flat)
    except (OverflowError, ValueError) as exc:  # an integer beyond 64 bits
        raise InvalidRequest(f"input {name!r}: {exc}") from None
    if not _fits(values, dtype):
        raise InvalidRequest(f"input {name!r}: every element of {datatype} data must be {_describe(dtype)}")
    return values.astype(dtype).reshape(shape)


def _flatten(data: Any, name: str) -> list[Any]:
    """Row-major elements of a flat or nested JSON list, without recursion (depth is the client's)."""
    if not isinstance(data, list):
        raise InvalidRequest(f"input {name!r}: 'data' must be a list")
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for element in stack[-1]:
            if isinstance(element, list):
                stack.append(iter(element))
                break
            flat.append(element)
        else:
            stack.pop()
    return flat


def _fits(values: NDArray[Any], dtype: np.dtype[Any]) -> bool:
    """Whether JSON numbers are valid elements of ``dtype``: bools for BOOL, integers in range for the
    integer types (no silent truncation of 1.5 or wrap-around of 256), any number for floats."""
    kind = values.dtype.kind
    if dtype.kind == "b":
        return kind == "b"
    if dtype.kind in "iu":
        if kind not in "iu":
            return False
        info = np.iinfo(dtype)
        return bool(values.min() >= info.min and values.max() <= info.max)
    return kind in "iuf"


def _describe(dtype: np.dtype[Any]) -> str:
    if dtype.kind == "b":
        return "true or false"
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return f"an integer from {info.min} to {info.max}"
    return "a number"


def _binary_data(
    chunk: memoryview, datatype: str, shape: tuple[int, ...], count: int, name: str
) -> NDArray[Any] | list[bytes]:
    if datatype == "BYTES":
        elements = _split_bytes(chunk, name)
        if len(elements) != count:
            raise InvalidRequest(
                f"input {name!r}: shape {list(shape)} holds {count} elements but the binary data has "
                f"{len(elements)}"
            )
        return elements
    dtype = NUMERIC_DATATYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise InvalidRequest(
            f"input {name!r}: shape {list(shape)} of {datatype} takes {count * dtype.itemsize} bytes but "
            f"binary_data_size is {len(chunk)}"
        )
    values = np.frombuffer(chunk, dtype).reshape(shape)
    if dtype.kind == "b" and values.view(np.uint8).max(initial=0) > 1:
        raise InvalidRequest(f"input {name!r}: BOOL elements must be the bytes 0 or 1")
    return values


def _split_bytes(chunk: memoryview, name: str) -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then the bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise InvalidRequest(f"input {name!r}: the binary BYTES data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise InvalidRequest(
                f"input {name!r}: a BYTES element of {length} bytes runs past its binary_data_size"
            )
        elements.append(bytes(chunk[offset : offset + length]))
        offset += length
    return elements


# -- responses ---------------------------------------------------------------------------------------
def _to_binary(output: OutputTensor) -> bytes:
    if isinstance(output.data, list):
        return b"".join(_LENGTH.pack(len(element)) + element for element in output.data)
    array = np.ascontiguousarray(output.data, NUMERIC_DATATYPES[output.datatype])
    return array.tobytes()
