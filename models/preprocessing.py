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

    The same as :func:`normalize_pixels` of :func:`to_pixels`, one image at a time.
    """
    return normalize_pixels(to_pixels(image, spec).unsqueeze(0), spec)[0].contiguous()


def to_pixels(image: Image.Image, spec: Preprocessing) -> Tensor:
    """The image in the card's colour mode as (H, W, C) uint8, before any arithmetic.

    The conversion uses Pillow's ITU-R 601 luma for "L". Modes Pillow cannot convert directly (16-bit,
    float) are scaled to 8 bits first and transparency is flattened, by :func:`to_8bit`. Under the
    "light_on_dark" polarity an image with a light border is inverted (:func:`has_light_border`), so dark
    strokes on white reach the model as the light strokes on dark it was trained on. Keeping pixels as
    bytes until the batch is formed lets the server normalise a whole batch at once, on its device, and
    move 4× fewer bytes there.
    """
    converted = to_8bit(image)
    if converted.mode != spec.color_mode:
        converted = converted.convert(spec.color_mode)
    array = np.array(converted, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers
    array = array.reshape(array.shape[0], array.shape[1], spec.channels)
    if spec.polarity == "light_on_dark" and has_light_border(array):
        np.subtract(255, array, out=array)
    return torch.from_numpy(array)


def has_light_border(pixels: NDArray[np.uint8]) -> bool:
    """Whether the median of an (H, W, C) image's outer ring of pixels is lighter than mid-grey.

    The border, not the whole image, decides: thick strokes may cover most of a drawing, but rarely most
    of its edge, and clutter fragments cover little of either. The ring is 4 pixels wide (less on images
    under 64 pixels a side, so it stays a ring); its channels are averaged.

    It runs on every image the service decodes, so it reads only the ring (a small grey image through a
    mask cached per size, larger ones side by side, so that no mask of a large upload is kept) and counts
    instead of sorting: the median lies on the side of mid-grey that more than half of the values are
    on, and only an exact tie takes the median. Channel sums stand for means, so the comparison stays in
    integers (a sum above 127.5·C is one above ⌊255·C/2⌋).
    """
    height, width, channels = pixels.shape
    if channels == 1 and height * width <= MASKED_RING_MAX_PIXELS:
        values = pixels.reshape(height, width)[_ring_mask(height, width)]
    else:
        ring = _ring_width(height, width)
        border = np.concatenate(
            (
                pixels[:ring].reshape(-1, channels),
                pixels[-ring:].reshape(-1, channels),
                pixels[ring:-ring, :ring].reshape(-1, channels),
                pixels[ring:-ring, -ring:].reshape(-1, channels),
            )
        )
        values = border.reshape(-1) if channels == 1 else border.sum(axis=1, dtype=np.uint16)
    light = int(np.count_nonzero(values > (255 * channels) // 2))
    if 2 * light != len(values):
        return 2 * light > len(values)
    return bool(np.median(values) > 127.5 * channels)


# Up to 256×256 a cached mask reads the ring (a 60×60 canvas: ``python -m bench.domain_cost``); the cache
# then holds at most 64 such masks, 4 MiB. Larger images read the ring's sides: no mask of theirs is kept.
MASKED_RING_MAX_PIXELS = 256 * 256


def _ring_width(height: int, width: int) -> int:
    return max(1, min(4, min(height, width) // 16))


@functools.lru_cache(maxsize=64)
def _ring_mask(height: int, width: int) -> NDArray[np.bool_]:
    """The (height, width) mask of :func:`has_light_border`'s ring; read-only, as it is shared."""
    ring = _ring_width(height, width)
    mask = np.ones((height, width), dtype=bool)
    mask[ring:-ring, ring:-ring] = False
    mask.flags.writeable = False
    return mask


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
    """Bring high-bit-depth and float single-channel images to 8-bit "L", keeping their full range, and
    flatten transparency with :func:`flatten_transparency`."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        array = array / _full_scale(image.mode, float(array.max()) if array.size else 0.0)
        array = np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
        return Image.fromarray((array * 255.0).round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return flatten_transparency(image)
    return image


def flatten_transparency(image: Image.Image) -> Image.Image:
    """An RGB image of ``image`` composited onto the background that contrasts with its opaque pixels.

    In a drawing exported with a transparent background the opaque strokes are the drawing, whatever
    their colour: dark strokes (alpha-weighted mean luma below mid-grey) go onto white, light ones onto
    black, so they stay visible instead of vanishing into a background of their own colour. A fully
    transparent image goes onto black.
    """
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32)
    coverage = float(alpha.sum())
    luma = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float32)
    dark_strokes = coverage > 0 and float((luma * alpha).sum()) / coverage < 127.5
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if dark_strokes else (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _full_scale(mode: str, peak: float) -> float:
    """The value that means "white" for a high-bit-depth image: its format's range, inferred for I/F."""
    if mode.startswith("I;16"):
        return 65535.0
    for scale in (1.0, 255.0, 65535.0):
        if peak <= scale:
            return scale
    return peak
