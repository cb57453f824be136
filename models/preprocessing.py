"""Turning decoded images into network input, exactly as the model card says."""

from __future__ import annotations

import functools

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor

from models.checkpoint import Preprocessing


def to_model_input(image: Image.Image, spec: Preprocessing) -> Tensor:
    """Convert a decoded Pillow image to a normalised (C, H, W) float tensor.

    The image is converted to the card's colour mode (Pillow's ITU-R 601 luma for "L"), scaled to
    [0, 1] and normalised per channel. Modes Pillow cannot convert directly (16-bit, float) are scaled
    to 8 bits first by :func:`to_8bit`. This runs once per served image, so the arithmetic stays in
    float32 NumPy with the statistics built once per card.
    """
    mean, std = _statistics(spec.mean, spec.std)
    array = np.asarray(to_8bit(image).convert(spec.color_mode), dtype=np.float32) / np.float32(255.0)
    if array.ndim == 2:
        return torch.from_numpy((array - mean) / std).unsqueeze(0)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())


@functools.lru_cache(maxsize=8)
def _statistics(
    mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    return np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)


def to_8bit(image: Image.Image) -> Image.Image:
    """Bring high-bit-depth and float single-channel images to 8-bit "L", keeping their full range."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        array = array / _full_scale(image.mode, float(array.max()) if array.size else 0.0)
        array = np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
        return Image.fromarray((array * 255.0).round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite onto black: the model was trained on dark backgrounds.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image


def _full_scale(mode: str, peak: float) -> float:
    """The value that means "white" for a high-bit-depth image: its format's range, inferred for I/F."""
    if mode.startswith("I;16"):
        return 65535.0
    for scale in (1.0, 255.0, 65535.0):
        if peak <= scale:
            return scale
    return peak
