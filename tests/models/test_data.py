"""Cluttered MNIST: the split rule, determinism and the ground-truth boxes."""

from __future__ import annotations

import torch

from models.data import DIGIT_SIZE, default_fragments, fixed_canvases, load_mnist_splits


def test_splits_follow_the_index_rule() -> None:
    splits = load_mnist_splits()
    assert {name: len(split) for name, split in splits.items()} == {
        "train": 3750,
        "validation": 250,
        "test": 1000,
    }
    for split in splits.values():
        assert len(set(torch.bincount(split.labels, minlength=10).tolist())) == 1  # balanced over classes
    train = {bytes(image.numpy()) for image in splits["train"].images}
    assert not any(bytes(image.numpy()) in train for image in splits["test"].images)


def test_canvases_are_deterministic_in_the_seed() -> None:
    test = load_mnist_splits()["test"]
    first = fixed_canvases(test, 60, seed=5)
    again = fixed_canvases(test, 60, seed=5)
    other = fixed_canvases(test, 60, seed=6)
    assert torch.equal(first.images, again.images)
    assert torch.equal(first.boxes, again.boxes)
    assert not torch.equal(first.images, other.images)


def test_boxes_hold_the_pasted_digit() -> None:
    test = load_mnist_splits()["test"]
    canvases = fixed_canvases(test, 100, seed=1)
    assert canvases.images.shape == (1000, 100, 100)
    widths = canvases.boxes[:, 2] - canvases.boxes[:, 0]
    heights = canvases.boxes[:, 3] - canvases.boxes[:, 1]
    assert bool((widths == DIGIT_SIZE).all() and (heights == DIGIT_SIZE).all())
    assert int(canvases.boxes.min()) >= 0
    assert int(canvases.boxes.max()) <= 100
    for index in range(0, 1000, 97):
        x0, y0, x1, y1 = canvases.boxes[index].tolist()
        # Clutter is max-combined, so every digit pixel is still at least as bright on the canvas.
        assert bool((canvases.images[index, y0:y1, x0:x1] >= test.images[index]).all())


def test_clutter_count_matches_the_paper() -> None:
    assert default_fragments(60) == 4
    assert default_fragments(100) == 8
