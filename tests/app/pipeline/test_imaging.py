"""Decoding any supported image safely, and encoding heatmaps and overlays."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from app.errors import ImageTooLarge, ImageTooSmall, InvalidImage, UnsupportedImage
from app.pipeline.colormaps import COLORMAPS
from app.pipeline.imaging import DecodedImage, convert_image, encode_png, open_image, overlay
from models.checkpoint import Preprocessing
from models.preprocessing import normalize_pixels, to_model_input
from tests.helpers import png_bytes

SPEC = Preprocessing()  # the bundled model's: grayscale, mean 0.1, std 0.3


def decode(data: bytes, max_pixels: int = 1 << 22, min_size: int = 16, keep_rgb: bool = False):  # type: ignore[no-untyped-def]
    """The predictor's two steps: the header's checks, then the pixels."""
    return convert_image(open_image(data, max_pixels, min_size), SPEC, keep_rgb)


def model_input(decoded: DecodedImage) -> torch.Tensor:
    """What the engine feeds the network for this image alone."""
    return normalize_pixels(decoded.pixels.unsqueeze(0), SPEC)[0].contiguous()


def gradient(width: int = 40, height: int = 30) -> np.ndarray:
    return (np.arange(width * height, dtype=np.uint32).reshape(height, width) * 7 % 256).astype(np.uint8)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("RGB", "JPEG"), ("RGBA", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"), ("RGB", "WEBP"),
     ("RGB", "BMP"), ("I;16", "PNG"), ("F", "TIFF"), ("1", "PNG")],
)  # fmt: skip
def test_decodes_every_mode_and_format_to_the_model_input(mode: str, fmt: str) -> None:
    image = Image.fromarray(gradient()).convert(mode) if mode not in ("I;16", "F") else None
    if mode == "I;16":
        image = Image.fromarray(gradient().astype(np.uint16) * 257)  # Pillow picks I;16
    if mode == "F":
        image = Image.fromarray(gradient().astype(np.float32) / 255.0, mode="F")
    assert image is not None
    decoded = decode(png_bytes(image, format=fmt))
    assert (decoded.pixels.shape, decoded.pixels.dtype) == ((30, 40, 1), torch.uint8)
    assert (decoded.width, decoded.height) == (40, 30)
    assert model_input(decoded).shape == (1, 30, 40)
    assert decoded.pixels.float().std() > 25  # the picture survived, not a blank


def test_lossless_decode_equals_to_model_input_of_the_original() -> None:
    original = Image.fromarray(gradient())
    assert torch.equal(model_input(decode(png_bytes(original))), to_model_input(original, SPEC))


def test_gif_uses_the_first_frame_and_tiff_the_first_page() -> None:
    first, second = Image.fromarray(gradient()), Image.fromarray(255 - gradient())
    for fmt in ("GIF", "TIFF"):
        buffer = io.BytesIO()
        first.save(buffer, format=fmt, save_all=True, append_images=[second])
        expected = to_model_input(first, SPEC)
        assert torch.allclose(model_input(decode(buffer.getvalue())), expected, atol=1e-6), fmt


def test_exif_orientation_is_applied() -> None:
    image = Image.fromarray(gradient(40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = png_bytes(image.convert("RGB"), format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode(data)
    assert (decoded.width, decoded.height) == (30, 40)
    assert decoded.pixels.shape == (40, 30, 1)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width×height but whose data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_declared_pixel_count_is_checked_before_decoding() -> None:
    bomb = png_declaring(5000, 5000)
    assert len(bomb) < 100
    with pytest.raises(ImageTooLarge, match="25000000 pixels"):
        decode(bomb, max_pixels=1_000_000)


def test_pillow_decompression_bomb_is_too_large_not_a_crash() -> None:
    with pytest.raises(ImageTooLarge):
        decode(png_declaring(40000, 40000), max_pixels=10**12)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", InvalidImage),
        (b"definitely not an image", UnsupportedImage),
        (png_bytes(gradient())[:60], InvalidImage),
        (png_bytes(gradient(15, 40)), ImageTooSmall),
    ],
)
def test_bad_inputs_raise_domain_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode(data)


def _flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_flipped(png_bytes(gradient()), 29), "a PNG but cannot be read: broken PNG file (bad header"),
        (b"\x89PNG\r\n\x1a\n" + b"\x01" * 300, "starts as a PNG but cannot be read"),
        (b"GIF89a" + b"\x00" * 6, "starts as a GIF but cannot be read"),
        (b"II*\x00\x08\x00\x00\x00" + b"\x00" * 8, "starts as a TIFF but cannot be read"),
    ],
)
def test_a_broken_file_of_a_known_format_is_named_invalid_not_unsupported(data: bytes, words: str) -> None:
    """Told "send PNG, JPEG, …" for a PNG with a broken header, a client cannot tell what is wrong."""
    with pytest.raises(InvalidImage, match=re.escape(words)):
        decode(data)


def tiff_with_fractional_strip_offsets() -> bytes:
    """A valid 16×16 TIFF whose StripOffsets tag is retyped RATIONAL: Pillow's load() raises TypeError.

    Hypothesis found this kind of file in a CI run of tests/test_hardening_fuzz.py.
    """
    buffer = io.BytesIO()
    Image.fromarray(gradient(16, 16)).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    assert data[:2] == b"II"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (entries,) = struct.unpack_from("<H", data, ifd)
    for entry in range(entries):
        offset = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, offset)[0] == 273:  # StripOffsets
            struct.pack_into("<H", data, offset + 2, 5)  # type RATIONAL
    return bytes(data)


def test_a_file_that_makes_pillow_raise_type_error_is_an_invalid_image() -> None:
    data = tiff_with_fractional_strip_offsets()
    with pytest.raises(TypeError):
        Image.open(io.BytesIO(data)).load()  # Pillow itself; the decoder must not pass this on
    with pytest.raises(InvalidImage, match="could not be decoded"):
        decode(data)


def test_keep_rgb_gives_the_input_as_rgb_uint8() -> None:
    decoded = decode(png_bytes(Image.fromarray(gradient())), keep_rgb=True)
    assert decoded.rgb is not None
    assert decoded.rgb.shape == (30, 40, 3)
    assert np.array_equal(decoded.rgb[..., 0], gradient())


@pytest.mark.parametrize("size", [(30, 40), (64, 64), (65, 64), (200, 120)])
def test_png_encoding_round_trips(size: tuple[int, int]) -> None:
    heat = gradient(width=size[1], height=size[0])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(heat)))), heat)
    rgb = np.stack([heat, 255 - heat, heat // 2], axis=-1)
    decoded = Image.open(io.BytesIO(encode_png(rgb)))
    assert decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), rgb)
    transposed = heat.T  # a strided view: encode_png must not assume row-major input
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(transposed)))), transposed)


@pytest.mark.parametrize("size", [(1, 1), (64, 64), (65, 64), (97, 3)])
def test_png_rows_that_wrap_modulo_256_and_checksums_survive_a_strict_decoder(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=size, dtype=np.uint8)  # row differences cover the whole byte range
    for array in (noise, np.stack([noise, 255 - noise, noise[::-1]], axis=-1)):
        png = encode_png(np.ascontiguousarray(array))
        Image.open(io.BytesIO(png)).verify()  # chunk CRCs and structure
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), array)


def test_png_encoding_refuses_what_it_cannot_write() -> None:
    for bad in (np.zeros((4, 4), dtype=np.float32), np.zeros((4, 4, 4), dtype=np.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            encode_png(bad)  # type: ignore[arg-type]


def test_maps_are_deflated_whatever_their_size() -> None:
    peaked = np.zeros((60, 60), dtype=np.uint8)
    peaked[20:30, 25:35] = 255  # like a trained model's map: one small bright region
    smooth = gradient(width=200, height=120)
    for heat in (peaked, smooth, np.zeros((1, 1), dtype=np.uint8)):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(heat)))), heat)
    assert len(encode_png(peaked)) < peaked.size // 10
    assert len(encode_png(smooth)) < smooth.size // 10


def test_colormaps_match_matplotlib_endpoints_and_overlay_blends_half() -> None:
    assert COLORMAPS["viridis"][0].tolist() == [68, 1, 84]
    assert COLORMAPS["viridis"][255].tolist() == [253, 231, 37]
    assert COLORMAPS["turbo"][0].tolist() == [48, 18, 59]
    black = np.zeros((2, 2, 3), dtype=np.uint8)
    heat = np.full((2, 2), 255, dtype=np.uint8)
    assert overlay(black, heat, "viridis")[0, 0].tolist() == [126, 116, 18]  # round(0.5 × (253, 231, 37))
