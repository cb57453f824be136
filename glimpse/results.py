"""What the Glimpse API answers, as typed values: PNGs decoded to Pillow images, grids to numpy arrays."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

MapKind = Literal["evidence", "attention"]


@dataclass(frozen=True)
class Prediction:
    label: str  # the class label from the model card
    index: int  # its position in the card's label list
    score: float  # softmax probability, 0…1


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str


@dataclass(frozen=True)
class Domain:
    """Whether the image looks like what the model was trained on (servers that report it)."""

    in_distribution: bool
    score: float  # 0…1


@dataclass(frozen=True, kw_only=True)
class PredictResult:
    model: ModelRef
    predictions: list[Prediction]  # highest score first
    domain: Domain | None = None  # None when the server does not report it
    warning: str | None = None  # plain-language caution, e.g. when the image is out of domain

    @property
    def top(self) -> Prediction:
        return self.predictions[0]


@dataclass(frozen=True, kw_only=True)
class AttentionMap(PredictResult):
    target: str  # the label the map explains
    kind: MapKind
    width: int  # of the input image, and of both PNGs
    height: int
    heatmap: Image.Image  # 8-bit grayscale ("L"), pixel-aligned with the input; 255 = the map's maximum
    overlay: Image.Image | None = None  # RGB, the colormapped heatmap over the input; when asked for
    grid: NDArray[np.float32] | None = None  # the raw feature-grid map, when asked for
    grid_stride: int = 4  # input pixels per grid step

    def heatmap_array(self) -> NDArray[np.float32]:
        """The heatmap as a height×width float array in [0, 1] (1 = the map's maximum)."""
        return np.asarray(self.heatmap, dtype=np.float32) / 255.0

    def overlay_array(self) -> NDArray[np.uint8]:
        """The overlay as a height×width×3 uint8 array; raises when it was not requested."""
        if self.overlay is None:
            raise ValueError("no overlay in this result: call attention_map(..., overlay=True)")
        return np.asarray(self.overlay.convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    labels: list[str]
    input: dict[str, Any]  # colour mode, normalisation, size limits, feature stride
    runtime: dict[str, Any]  # device and precision of the forward pass
    evaluation: dict[str, Any]  # the metrics recorded in the model card
    raw: dict[str, Any] = field(repr=False)  # the whole answer, including fields newer than this client


def decode_png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def predict_result(payload: dict[str, Any]) -> PredictResult:
    return PredictResult(**_common(payload))


def attention_map(payload: dict[str, Any]) -> AttentionMap:
    grid = payload.get("grid")
    overlay = payload.get("overlay")
    return AttentionMap(
        **_common(payload),
        target=payload["target"],
        kind=payload["kind"],
        width=payload["width"],
        height=payload["height"],
        heatmap=decode_png(payload["heatmap"]),
        overlay=decode_png(overlay) if overlay else None,
        grid=np.asarray(grid, dtype=np.float32) if grid is not None else None,
        grid_stride=payload.get("grid_stride", 4),
    )


def model_info(payload: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        name=payload["name"],
        version=payload["version"],
        labels=list(payload["labels"]),
        input=dict(payload.get("input", {})),
        runtime=dict(payload.get("runtime", {})),
        evaluation=dict(payload.get("evaluation", {})),
        raw=payload,
    )


def _common(payload: dict[str, Any]) -> dict[str, Any]:
    domain = payload.get("domain")
    return {
        "model": ModelRef(payload["model"]["name"], payload["model"]["version"]),
        "predictions": [Prediction(p["label"], p["index"], p["score"]) for p in payload["predictions"]],
        "domain": Domain(bool(domain["in_distribution"]), float(domain["score"])) if domain else None,
        "warning": payload.get("warning"),
    }
