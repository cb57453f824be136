"""The v2 routes' OpenAPI contract: what the protocol's JSON objects look like (the routes read and
write them with :mod:`.codec`; these models document them and let schemathesis check the answers)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.transports.v2.codec import DATATYPES


class ErrorV2(BaseModel):
    error: str = Field(description="What went wrong and what to fix.", examples=["unknown output 'logits'"])


class ServerMetadataV2(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(examples=[["binary_tensor_data"]])


class LiveV2(BaseModel):
    live: bool


class ReadyV2(BaseModel):
    ready: bool


class ModelReadyV2(BaseModel):
    name: str
    ready: bool


class TensorMetadataV2(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a dimension of any size.")


class ModelMetadataV2(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadataV2]
    outputs: list[TensorMetadataV2]
    parameters: dict[str, Any] = Field(description="labels: the class names in the order of probabilities.")


class ResponseOutputV2(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size when sent as binary data.")
    data: list[Any] | None = Field(None, description="Row-major elements; absent when sent as binary data.")


class InferResponseV2(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutputV2]


_PARAMETERS = {"type": "object", "additionalProperties": True}
_INPUT = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "enum": ["image", "pixels"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(DATATYPES)},
        "parameters": {**_PARAMETERS, "description": "binary_data_size: bytes of this input after the JSON."},
        "data": {"type": "array", "description": "Row-major elements, flat or nested; BYTES as base64."},
    },
}
_OUTPUT = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "enum": ["probabilities", "label", "heatmap"]},
        "parameters": {**_PARAMETERS, "description": "binary_data (bool); for heatmap also target, kind."},
    },
}
INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {**_PARAMETERS, "description": "binary_data_output (bool), target (a label), kind."},
        "inputs": {"type": "array", "items": _INPUT, "minItems": 1},
        "outputs": {"type": "array", "items": _OUTPUT},
    },
}
INFER_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An Open Inference Protocol infer request. `image`: BYTES [N], each element an "
        "encoded image (base64 in JSON). `pixels`: UINT8 [N, H, W] or [N, H, W, C]. With Triton's binary "
        "tensor data extension the body is the JSON (Inference-Header-Content-Length bytes) followed by "
        "the tensors, a BYTES element as a 4-byte little-endian length and its bytes.",
        "content": {
            "application/json": {"schema": INFER_REQUEST_SCHEMA},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "schema": {"type": "integer", "minimum": 1},
            "description": "Length of the JSON part when binary tensor data follows it.",
        }
    ],
}
INFER_RESPONSES: dict[str, Any] = {
    "description": "The requested outputs (all by default): probabilities FP32 [N, classes], label BYTES "
    "[N], heatmap UINT8 [N, H, W]. Outputs asked for as binary data follow the JSON, whose length is "
    "then in the Inference-Header-Content-Length header (Content-Type application/octet-stream).",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
