"""Image I/O for the service: safe decoding into model input, PNG encoding of heatmaps and overlays.

Decoding is defensive: the declared size is checked against the pixel limit *before* any pixel is
decoded (Pillow's ``open`` reads only the header), so a small file that declares a huge image never
allocates it. All functions here are synchronous. :func:`open_image` reads only the header and is cheap
enough for the event loop; decoding, resampling and encoding are meant for a worker thread (Pillow
releases the GIL while it decodes, zlib while it compresses), except for images so small that handing
them to a thread would cost more than the work (:data:`app.pipeline.predictor.INLINE_MAX_PIXELS`).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from app.errors import ImageTooLarge, ImageTooSmall, InvalidImage, UnsupportedImage
from app.pipeline.colormaps import COLORMAPS
from models.attention_net import upsample_to_input as model_upsample_to_input
from models.checkpoint import Preprocessing
from models.preprocessing import to_8bit, to_pixels

Colormap = Literal["turbo", "viridis"]
OVERLAY_ALPHA = 0.5  # weight of the colormap over the input image
# The documented formats only: Pillow also opens ~40 others, some through rarely fuzzed parsers and
# EPS through an external Ghostscript process, none of which a client needs.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


@dataclass(slots=True)
class DecodedImage:
    """One request image, ready for the model.

    Attributes:
        pixels: The image in the card's colour mode, (H, W, C) uint8; the engine normalises batches.
        width: Width of the input in pixels, after EXIF orientation.
        height: Height of the input in pixels, after EXIF orientation.
        rgb: The input as (H, W, 3) uint8, kept only when an overlay was asked for.
    """

    pixels: Tensor
    width: int
    height: int
    rgb: NDArray[np.uint8] | None = None


def decode_image(
    data: bytes, spec: Preprocessing, max_pixels: int, min_size: int, keep_rgb: bool = False
) -> DecodedImage:
    """Decode any image Pillow reads safely and convert it as the model card says.

    The first frame of an animated GIF or the first page of a TIFF is used; EXIF orientation is applied.

    Raises:
        UnsupportedImage: Pillow does not recognise the format.
        ImageTooLarge: The declared width×height exceeds ``max_pixels``.
        ImageTooSmall: Width or height is below ``min_size``.
        InvalidImage: The file is recognised but truncated or corrupt.
    """
    return convert_image(open_image(data, max_pixels, min_size), spec, keep_rgb)


def open_image(data: bytes, max_pixels: int, min_size: int) -> Image.Image:
    """Read only the header and check the declared size: the cheap first half of :func:`decode_image`.

    Raises:
        UnsupportedImage, ImageTooLarge, ImageTooSmall, InvalidImage: As :func:`decode_image`.
    """
    if not data:
        raise InvalidImage("the image is empty")
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        raise UnsupportedImage(
            "the image format is not recognised; send PNG, JPEG, WebP, BMP, GIF or TIFF"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image declares too many pixels (limit {max_pixels})") from exc
    except Exception as exc:
        # Pillow's parsers raise more than OSError and ValueError on crafted files: a TIFF whose strip
        # offsets are a fraction gives TypeError, others struct.error or IndexError. Each is the
        # client's broken file (422), never the server's error (500).
        raise InvalidImage(f"the image could not be read: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}×{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    if min(width, height) < min_size:
        raise ImageTooSmall(f"the image is {width}×{height}; both sides must be at least {min_size} pixels")
    return image


def convert_image(image: Image.Image, spec: Preprocessing, keep_rgb: bool = False) -> DecodedImage:
    """Decode the pixels of an image from :func:`open_image` into model input: the costly second half.

    Raises:
        InvalidImage: The pixel data is truncated or corrupt.
    """
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
        pixels = to_pixels(image, spec)
        rgb = np.asarray(to_8bit(image).convert("RGB"), dtype=np.uint8) if keep_rgb else None
    except Exception as exc:  # any failure on the client's bytes, as in open_image
        raise InvalidImage(f"the image could not be decoded: {exc}") from exc
    height, width = pixels.shape[:2]
    return DecodedImage(pixels, int(width), int(height), rgb)


def render_heatmaps(maps: Tensor, input_height: int, input_width: int, stride: int) -> Tensor:
    """Resample the positive part of feature-grid maps onto the input's pixels as 8-bit heat images.

    Negative evidence shows as 0 (attention maps are never negative, so they are unchanged). One
    batched call for maps of images of one size, on the tensors' device: the engine renders a batch's
    maps together on the model's device, instead of a few tensor operations per image on the event loop.

    The maps are scaled before they are resampled, on their few grid cells instead of every pixel. That
    changes nothing: the resampling puts each cell on a pixel and makes every other pixel a convex
    combination of cells, so a map's peak is the same on the grid as on the pixels.

    Args:
        maps: (B, h, w) maps over each image's valid feature grid.
        input_height: Height of the images in pixels.
        input_width: Width of the images in pixels.
        stride: The network's feature stride.

    Returns:
        (B, input_height, input_width) uint8 heat images, scaled as :func:`heatmaps_to_uint8` scales.
    """
    scaled = model_upsample_to_input(scale_peaks_to_255(maps), input_height, input_width, stride)
    return scaled.round_().to(torch.uint8)  # in [0, 255] already: convex combinations of [0, 255]


def heatmaps_to_uint8(heatmaps: Tensor) -> Tensor:
    """Scale each (H, W) map of a (B, H, W) batch so its maximum is 255, negatives to 0, rounding to
    nearest; a map with no positive (or a non-finite) maximum becomes all zero."""
    return scale_peaks_to_255(heatmaps).round_().to(torch.uint8)


def scale_peaks_to_255(maps: Tensor) -> Tensor:
    """The positive part of each (H, W) map of a (B, H, W) batch, scaled so its maximum is 255; float32.

    A map with no positive maximum, or with any NaN or infinity, becomes all zero: blank, never garbage.
    """
    positive = maps.float().clamp(min=0)
    if positive.numel() == 0:
        return positive
    peak = positive.amax(dim=(1, 2), keepdim=True)
    scale = (255.0 / peak).nan_to_num_(nan=0.0, posinf=0.0)  # a zero peak gives inf; a NaN peak, NaN
    return (positive * scale).nan_to_num_(nan=0.0)  # an infinite or NaN map times 0 gives NaN


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_FILTER_NONE, _PNG_FILTER_UP = 0, 2


def encode_png(array: NDArray[np.uint8]) -> bytes:
    """PNG bytes of an (H, W) grayscale or (H, W, 3) RGB uint8 array.

    Written with zlib directly rather than through Pillow, whose per-image set-up dominated small maps.
    Every row after the first is stored as its difference from the row above (PNG's "up" filter) and
    deflated at level 1. The bundled model's 60×60 map then encodes 2–2.6× faster than Pillow stored it
    raw, in a fifteenth of the bytes (``python -m bench.png_encode``).
    """
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"expected an (H, W) or (H, W, 3) uint8 array, got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    flat = np.ascontiguousarray(array).reshape(height, -1)  # row differences of a strided view are slow
    rows = np.empty((height, 1 + flat.shape[1]), dtype=np.uint8)
    rows[0, 0], rows[1:, 0] = _PNG_FILTER_NONE, _PNG_FILTER_UP
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # wraps modulo 256, as PNG defines it
    color_type = 0 if array.ndim == 2 else 2  # grayscale or truecolour, 8 bits a sample
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    pixels = zlib.compress(rows.tobytes(), 1)
    return b"".join(
        (_PNG_SIGNATURE, _png_chunk(b"IHDR", header), _png_chunk(b"IDAT", pixels), _png_chunk(b"IEND", b""))
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def overlay(rgb: NDArray[np.uint8], heat: NDArray[np.uint8], colormap: Colormap) -> NDArray[np.uint8]:
    """Blend the colormapped heatmap over the RGB input at :data:`OVERLAY_ALPHA`."""
    colored = COLORMAPS[colormap][heat].astype(np.float32)
    blended = rgb.astype(np.float32) * (1.0 - OVERLAY_ALPHA) + colored * OVERLAY_ALPHA
    return np.rint(blended).astype(np.uint8)
