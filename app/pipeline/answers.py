"""The JSON answers of ``/predict`` and ``/attention-map``, shaped like the ``…Public`` schemas."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.engine.work import Prediction
from app.pipeline.imaging import DecodedImage, encode_png, overlay
from app.pipeline.query import Query
from models.domain import WARNING


@dataclass(frozen=True, slots=True)
class Domain:
    """Whether an image looks like what the model was trained on (:mod:`models.domain`)."""

    in_distribution: bool
    score: float  # 0…1; 0.5 is the calibrated threshold


def predictions(labels: Sequence[str], prediction: Prediction) -> list[dict[str, Any]]:
    """The ``predictions`` list: label, class index and probability, best first."""
    return [
        {"label": labels[index], "index": index, "score": score}
        for index, score in zip(prediction.indices, prediction.scores, strict=True)
    ]


def prediction(
    model: dict[str, str], labels: Sequence[str], result: Prediction, domain: Domain
) -> dict[str, Any]:
    return {"model": model, "predictions": predictions(labels, result), **verdict(domain)}


def verdict(domain: Domain) -> dict[str, Any]:
    """The ``domain`` of an answer, and its ``warning`` when the image is out of the model's domain."""
    return {
        "domain": {"in_distribution": domain.in_distribution, "score": domain.score},
        "warning": None if domain.in_distribution else WARNING,
    }


def attention_map(
    model: dict[str, str],
    labels: Sequence[str],
    stride: int,
    query: Query,
    decoded: DecodedImage,
    result: Prediction,
    domain: Domain,
) -> dict[str, Any]:
    """Encode the heat image (and the overlay) as PNGs; in the decode pool unless the image is small."""
    assert result.heat is not None
    assert result.target is not None
    assert result.grid is not None
    blended = None
    if query.overlay:
        assert decoded.rgb is not None
        blended = _b64(encode_png(overlay(decoded.rgb, result.heat, query.colormap)))
    answer: dict[str, Any] = {
        "model": model,
        "predictions": predictions(labels, result),
        "target": labels[result.target],
        "kind": query.kind,
        "width": decoded.width,
        "height": decoded.height,
        "heatmap": _b64(encode_png(result.heat)),
        "overlay": blended,
        "grid_stride": stride,
        **verdict(domain),
    }
    if query.include_grid:
        answer["grid"] = result.grid.tolist()
    return answer


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
