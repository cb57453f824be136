"""Request and response models. ``…Public`` models describe what leaves the service.

The prediction routes serialise plain dicts with ``json.dumps`` instead of validating their own
responses through these models (the models still document the responses in OpenAPI); the tests check
that real responses validate against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A 16×16 black PNG.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAAAAAA6mKC9AAAADUlEQVR4nGNgGAXIAAABEAABoJMRpQAAAABJRU5ErkJggg=="
)


class ImagesRequest(BaseModel):
    """JSON alternative to a multipart upload: exactly one of ``image`` or ``images``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"image": EXAMPLE_PNG}]})

    image: str | None = Field(
        None, description="One base64-encoded image file (a data: URL prefix is allowed)."
    )
    images: list[str] | None = Field(
        None, description="Several base64-encoded images; the response is then {'results': [...]}, in order."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ImagesRequest:
        if (self.image is None) == (self.images is None):
            raise ValueError("send exactly one of 'image' or 'images'")
        return self


class ModelRefPublic(BaseModel):
    name: str = Field(description="Model name from its card.", examples=["glimpse-cluttered-mnist"])
    version: str = Field(description="Model version from its card.", examples=["1.0.0"])


class PredictionPublic(BaseModel):
    label: str = Field(description="Class label from the model card.", examples=["7"])
    index: int = Field(description="Class index (position in the card's label list).", examples=[7])
    score: float = Field(description="Softmax probability of the class, 0…1.", examples=[0.98])


class DomainPublic(BaseModel):
    in_distribution: bool = Field(
        description="Whether the image looks like what the model was trained on; when false the scores "
        "are unreliable and `warning` says why."
    )
    score: float = Field(
        description="0…1: about 1 for a typical training image, 0.5 at the calibrated threshold, near 0 "
        "far from the model's domain (docs: The model, In-domain score).",
        examples=[0.98],
    )


class PredictResponsePublic(BaseModel):
    model: ModelRefPublic
    predictions: list[PredictionPublic] = Field(description="The top_k classes, highest score first.")
    domain: DomainPublic
    warning: str | None = Field(
        description="Set when `domain.in_distribution` is false: what the model reads, in plain words."
    )


class BatchPredictResponsePublic(BaseModel):
    results: list[PredictResponsePublic] = Field(description="One entry per image, in request order.")


class AttentionMapResponsePublic(PredictResponsePublic):
    target: str = Field(description="Label of the class the map explains.", examples=["7"])
    kind: Literal["evidence", "attention"] = Field(description="Which map the heatmap shows.")
    width: int = Field(description="Width of the input image (after EXIF orientation) and of the PNGs.")
    height: int = Field(description="Height of the input image (after EXIF orientation) and of the PNGs.")
    heatmap: str = Field(
        description="Base64 8-bit grayscale PNG, width×height, pixel-aligned with the input; 255 = the map's "
        "maximum, 0 = zero (an all-zero PNG when the map has no positive value)."
    )
    overlay: str | None = Field(
        description="Base64 RGB PNG of the colormapped heatmap blended over the input; "
        "null unless overlay=true."
    )
    grid: list[list[float]] | None = Field(
        None, description="The raw map over the valid feature grid (rows × columns) when include_grid=true."
    )
    grid_stride: int = Field(
        description="Input pixels per grid step; cell (i, j) is centred on pixel (stride·i, stride·j).",
        examples=[4],
    )


class BatchAttentionMapResponsePublic(BaseModel):
    results: list[AttentionMapResponsePublic] = Field(description="One entry per image, in request order.")


class InputSpecPublic(BaseModel):
    color_mode: str = Field(description="Pillow mode images are converted to.", examples=["L"])
    channels: int = Field(examples=[1])
    mean: list[float] = Field(description="Per-channel mean subtracted after scaling to [0, 1].")
    std: list[float] = Field(description="Per-channel standard deviation divided by.")
    size_policy: str = Field(description="'native': any size at or above min_size, no resizing.")
    polarity: str = Field(
        description="'light_on_dark': transparency is flattened onto the background that contrasts with "
        "the strokes, and light-background images are inverted, to the light-on-dark the model reads; "
        "'as_is': no change.",
        examples=["light_on_dark"],
    )
    min_size: int = Field(description="Smallest accepted width and height in pixels.")
    max_pixels: int = Field(description="Largest accepted width×height.")
    feature_stride: int = Field(description="Input pixels per attention-grid step.")


class RuntimePublic(BaseModel):
    device: str = Field(description="Where the forward pass runs.", examples=["cpu", "cuda:0"])
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        description="Arithmetic of the forward pass (GLIMPSE_AMP_DTYPE; auto resolves per device)."
    )


class ModelInfoPublic(BaseModel):
    name: str
    version: str
    labels: list[str]
    num_classes: int
    input: InputSpecPublic
    runtime: RuntimePublic
    evaluation: dict[str, Any] = Field(description="Evaluation metrics recorded in the model card.")
    domain: dict[str, Any] | None = Field(
        description="How the in-domain score was calibrated and how it flagged test and out-of-domain "
        "images; null for a model without a scorer."
    )


class HealthPublic(BaseModel):
    status: Literal["alive", "ready"]


class ErrorDetailPublic(BaseModel):
    code: str = Field(description="Stable machine-readable code.", examples=["invalid_image"])
    message: str = Field(
        description="What went wrong, for humans.", examples=["the image could not be decoded"]
    )


class ErrorPublic(BaseModel):
    error: ErrorDetailPublic
