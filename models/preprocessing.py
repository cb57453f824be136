"""Turning decoded images into network input, exactly as the model card says."""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from models.checkpoint import Preprocessing


def to_model_input(image: Image.Image, spec: Preprocessing) -> Tensor:
    """Convert a decoded Pillow image to a normalised (C, H, W) float tensor.

    The same as :func:`normalize_pixels` of :func:`to_pixels`, one image at a time.
    """
    return normalize_pixels(to_pixels(image, spec).unsqueeze(0), spec)[0].contiguous()


def to_pixels(image: Image.Image, spec: Preprocessing) -> Tensor:
    """The image in the card's colour mode as (H, W, C) uint8, before any arithmetic.

    The conversion uses Pillow's ITU-R 601 luma for "L". Modes Pillow cannot convert directly (16-bit,
    float) are scaled to 8 bits first by :func:`to_8bit`. Keeping pixels as bytes until the batch is
    formed lets the server normalise a whole batch at once, on its device, and move 4× fewer bytes there.
    """
    converted = to_8bit(image)
    if converted.mode != spec.color_mode:
        converted = converted.convert(spec.color_mode)
    array = np.array(converted, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers
    return torch.from_numpy(array.reshape(array.shape[0], array.shape[1], spec.channels))


def normalize_pixels(pixels: Tensor, spec: Preprocessing, device: torch.device | None = None) -> Tensor:
    """Scale (B, H, W, C) uint8 pixels to [0, 1] and normalise per channel: (B, C, H, W) float32.

    Args:
        pixels: As :func:`to_pixels` gives them, stacked.
        spec: The card's preprocessing.
        device: Where to compute; the bytes are copied there first. Default: the pixels' device.

    Returns:
        A channels-last view of the pixels' layout, the layout the network runs fastest in; call
        ``.contiguous()`` for the standard one.
    """
    device = device or pixels.device
    pixels = pixels.to(device, non_blocking=pixels.is_pinned())
    mean, std = _statistics(spec.mean, spec.std, device)
    return ((pixels.float() / 255.0 - mean) / std).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=16)
def _statistics(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    with torch.inference_mode(False):  # usable inside and outside inference mode
        return torch.tensor(mean, device=device), torch.tensor(std, device=device)


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
