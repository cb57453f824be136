"""A user's own labelled images: one sub-folder per class, like torchvision's ImageFolder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageFolderData:
    """Images resized to one square size as uint8 (N, C, S, S), split into train and validation."""

    labels: list[str]
    train_images: Tensor
    train_labels: Tensor
    validation_images: Tensor
    validation_labels: Tensor


def load_image_folder(
    root: Path, image_size: int, color_mode: str, seed: int, validation_share: float = 0.15
) -> ImageFolderData:
    """Read every image under ``root/<class>/``, resized to ``image_size`` squared.

    Each class keeps at least one image for training and, when it has two or more, one for validation.

    Raises:
        ValueError: If there are fewer than two classes or a class has no readable image.
    """
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"{root} needs at least two class sub-folders, found {classes}")
    generator = np.random.default_rng(seed)
    parts: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "validation": []}
    for index, name in enumerate(classes):
        files = sorted(f for f in (root / name).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"class folder {root / name} has no images")
        arrays = [_read(f, image_size, color_mode) for f in files]
        order = generator.permutation(len(arrays))
        held_out = min(
            len(arrays) - 1, max(1 if len(arrays) > 1 else 0, round(len(arrays) * validation_share))
        )
        for rank, position in enumerate(order):
            parts["validation" if rank < held_out else "train"].append((arrays[position], index))

    def stack(items: list[tuple[np.ndarray, int]]) -> tuple[Tensor, Tensor]:
        if not items:
            return torch.zeros(
                0, 1 if color_mode == "L" else 3, image_size, image_size, dtype=torch.uint8
            ), torch.zeros(0, dtype=torch.long)
        images = torch.from_numpy(np.stack([a for a, _ in items]))
        return images, torch.tensor([label for _, label in items], dtype=torch.long)

    train_images, train_labels = stack(parts["train"])
    validation_images, validation_labels = stack(parts["validation"] or parts["train"])
    return ImageFolderData(classes, train_images, train_labels, validation_images, validation_labels)


def _read(path: Path, image_size: int, color_mode: str) -> np.ndarray:
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert(color_mode).resize((image_size, image_size))
        array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
