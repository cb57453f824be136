"""What a batch is made of: each image's work and answer, how the forward pass runs, how a batch splits.

The types the request pipeline hands the engine and gets back (:mod:`app.engine.forward` does the
work), and the two pure steps around a pass: splitting a batch into groups cheap to pad together, and
ranking the classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

MapKind = Literal["evidence", "attention"]
PAD_WASTE_LIMIT = 2.0  # pad an image only up to 2× its own pixels


@dataclass(slots=True, frozen=True)
class MapRequest:
    """Which map to return with a prediction: ``target`` is a class index, None for the top class."""

    kind: MapKind
    target: int | None = None


@dataclass(slots=True)
class Prediction:
    """The model's answer for one image.

    Attributes:
        indices: Class indices of the top-k scores, best first.
        scores: Their softmax probabilities.
        target: The class the map explains (None when no map was asked for).
        grid: The requested map over the valid feature grid, (h, w) float32 on the CPU.
        heat: The map resampled onto the input's pixels and scaled to 0…255 (negative evidence shown
            as 0), (H, W) uint8 — what the heatmap PNG shows; None for images larger than
            :data:`~app.engine.forward.RENDER_IN_BATCH_MAX_PIXELS`, which the predictor renders itself.
        domain_score: How much the forward pass looks like the training canvases', 0…1
            (:meth:`models.domain.DomainScorer.output_score`); 1.0 for a model without a scorer.
    """

    indices: list[int]
    scores: list[float]
    domain_score: float = 1.0
    target: int | None = None
    grid: Tensor | None = None
    heat: NDArray[np.uint8] | None = None


@dataclass(slots=True, frozen=True)
class ImageWork:
    """One image's share of a batch: its pixels, (H, W, C) uint8, and what to answer for it."""

    pixels: Tensor
    top_k: int
    map_request: MapRequest | None


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    """How the forward pass runs (built from the service's settings)."""

    max_batch_pixels: int  # padded pixels per forward pass; one larger image runs alone
    amp_dtype: torch.dtype | None  # autocast dtype on the model's device; None runs float32
    channels_last: bool  # convolutions in channels-last memory format
    cuda_graphs: bool  # CUDA only: replay same-size batches from graphs (app.engine.cuda_graphs)


def rank_classes(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Every class's softmax probability, best first, with the class indices; ties keep class order."""
    ranked = torch.softmax(logits.float(), dim=1).sort(dim=1, descending=True, stable=True)
    return ranked.values, ranked.indices


def plan_groups(sizes: list[tuple[int, int]], max_batch_pixels: int) -> list[list[int]]:
    """Split a batch into groups that are cheap to pad together, returning indices into ``sizes``.

    Greedy over images sorted by area, largest first: an image joins the open group while padding it
    to the group's height × width costs at most :data:`PAD_WASTE_LIMIT` × its own pixels (it is the
    smallest member, so no member is padded more) and the padded group fits ``max_batch_pixels``.
    """
    order = sorted(range(len(sizes)), key=lambda i: sizes[i][0] * sizes[i][1], reverse=True)
    groups: list[list[int]] = []
    height = width = 0
    for index in order:
        h, w = sizes[index]
        padded_height, padded_width = max(height, h), max(width, w)
        padded = padded_height * padded_width
        if (
            groups
            and padded <= PAD_WASTE_LIMIT * h * w
            and padded * (len(groups[-1]) + 1) <= max_batch_pixels
        ):
            groups[-1].append(index)
            height, width = padded_height, padded_width
        else:
            groups.append([index])
            height, width = h, w
    return groups
