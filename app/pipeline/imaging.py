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
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from app.errors import ImageTooLarge, ImageTooSmall, InvalidImage, UnsupportedImage
from app.pipeline.colormaps import COLORMAPS
from models.checkpoint import Preprocessing
from models.domain import colourful_fraction
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
        colourful: Share of strongly coloured pixels before the conversion to the card's colour mode
            (:func:`models.domain.colourful_fraction`): evidence for the in-domain score that the
            grayscale conversion would discard.
    """

    pixels: Tensor
    width: int
    height: int
    rgb: NDArray[np.uint8] | None = None
    colourful: float = 0.0


def open_image(data: bytes, max_pixels: int, min_size: int) -> Image.Image:
    """Read only the header and check the declared size: the cheap first half of decoding.

    Raises:
        UnsupportedImage: Pillow does not recognise the format.
        ImageTooLarge: The declared width×height exceeds ``max_pixels``.
        ImageTooSmall: Width or height is below ``min_size``.
        InvalidImage: The file is recognised but its header is broken.
    """
    if not data:
        raise InvalidImage("the image is empty")
    check_structure(data)
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        raise _unidentified(data) from exc
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


def _unidentified(data: bytes) -> UnsupportedImage | InvalidImage:
    """The error for a file Pillow did not identify: unsupported, unless it starts with the signature of
    an allowed format. Then the client sent the right format in a broken file, and "send PNG, JPEG, …"
    would not tell them that: its parser's reason does ("broken PNG file (bad header checksum …)")."""
    for fmt in ALLOWED_FORMATS:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None or accept is None or not accept(data[:16]):
            continue
        try:
            factory(io.BytesIO(data), "")
        except Exception as reason:  # what Image.open swallowed, from the same parser
            return InvalidImage(f"the file starts as a {fmt} but cannot be read: {str(reason)[:200]}")
    return UnsupportedImage("the image format is not recognised; send PNG, JPEG, WebP, BMP, GIF or TIFF")


# Pillow reads PNG chunks and GIF blocks one at a time in Python, and libjpeg decodes every scan of a
# progressive JPEG over the whole image: a 12 MB PNG of a million empty chunks, a GIF of 3 M empty
# comment blocks or a JPEG of 350 k empty scans takes seconds to tens of seconds of CPU that no
# deadline can stop. Encoders write far fewer (libpng splits pixels into 8 KiB chunks, GIF encoders
# write a handful of extensions, libjpeg 10 scans, mozjpeg about as many), so past these bounds the
# file is refused before Pillow reads it; checking costs a bytes count or a walk of at most the bound.
PNG_MAX_CHUNKS_BASE = 256  # plus one chunk per PNG_MIN_AVERAGE_CHUNK_BYTES of file
PNG_MIN_AVERAGE_CHUNK_BYTES = 2048
GIF_MAX_BLOCKS_BEFORE_IMAGE = 1024  # extension blocks and their data sub-blocks before the first image
JPEG_MAX_SCANS = 100


def check_structure(data: bytes) -> None:
    """Refuse a PNG, GIF or JPEG with more chunks, blocks or scans than any encoder writes.

    Raises:
        InvalidImage: Past :data:`PNG_MAX_CHUNKS_BASE`, :data:`GIF_MAX_BLOCKS_BEFORE_IMAGE` or
            :data:`JPEG_MAX_SCANS` (the comment above them says why).
    """
    if data.startswith(_PNG_SIGNATURE):
        limit = PNG_MAX_CHUNKS_BASE + len(data) // PNG_MIN_AVERAGE_CHUNK_BYTES
        if _png_chunks(data, limit) > limit:
            raise InvalidImage(f"the PNG has more than {limit} chunks; encoders write far fewer, larger ones")
    elif data.startswith((b"GIF87a", b"GIF89a")):
        if _gif_blocks_before_image(data, GIF_MAX_BLOCKS_BEFORE_IMAGE) > GIF_MAX_BLOCKS_BEFORE_IMAGE:
            raise InvalidImage(
                f"the GIF has more than {GIF_MAX_BLOCKS_BEFORE_IMAGE} extension blocks before its image"
            )
    elif data.startswith(b"\xff\xd8") and data.count(b"\xff\xda") > JPEG_MAX_SCANS:
        # 0xFF in entropy-coded data is always followed by 0x00 or a restart marker, so this counts
        # start-of-scan markers (and those of an embedded thumbnail, a few more).
        raise InvalidImage(f"the JPEG has more than {JPEG_MAX_SCANS} scans")


def _png_chunks(data: bytes, limit: int) -> int:
    """How many chunks the PNG has, counting at most ``limit + 1`` (Pillow words a broken layout)."""
    position, count = len(_PNG_SIGNATURE), 0
    while position + 8 <= len(data) and count <= limit:
        length = int.from_bytes(data[position : position + 4], "big")
        count += 1
        if data[position + 4 : position + 8] == b"IEND":
            break
        position += 12 + length
    return count


def _gif_blocks_before_image(data: bytes, limit: int) -> int:
    """Extension blocks and sub-blocks before the GIF's first image, counting at most ``limit + 1``."""
    flags = data[10] if len(data) > 10 else 0
    position = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)  # past the colour table
    count = 0
    while position + 1 < len(data) and data[position] == 0x21 and count <= limit:
        position += 2  # the introducer and the label, then sub-blocks up to an empty one
        while position < len(data) and count <= limit:
            size = data[position]
            position += 1 + size
            count += 1
            if size == 0:
                break
    return count


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
        colourful = colourful_fraction(image)
    except Exception as exc:  # any failure on the client's bytes, as in open_image
        raise InvalidImage(f"the image could not be decoded: {exc}") from exc
    height, width = pixels.shape[:2]
    return DecodedImage(pixels, int(width), int(height), rgb, colourful)


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
