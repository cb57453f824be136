"""The polarity policy: what users draw reaches the model as light strokes on a dark background."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from models.checkpoint import (
    CARD_FILE,
    DEFAULT_MODEL_DIR,
    POLARITY_POLICIES,
    ModelArtifactError,
    Preprocessing,
    read_card,
)
from models.preprocessing import has_light_border, to_pixels

POLICY = Preprocessing(polarity="light_on_dark")


def drawing(size: tuple[int, int] = (120, 90)) -> Image.Image:
    """A white "7"-like stroke on black, anti-aliased edges included: the model's own polarity."""
    image = Image.new("L", size, 0)
    draw = ImageDraw.Draw(image)
    draw.line((30, 20, 80, 20, 45, 75), fill=255, width=9, joint="curve")
    draw.line((30, 50, 70, 50), fill=128, width=3)  # a mid-grey stroke too
    return image


def round_trip(image: Image.Image, fmt: str = "PNG") -> Image.Image:
    """Encode and decode, as an upload reaches the service."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    buffer.seek(0)
    decoded = Image.open(buffer)
    decoded.load()
    return decoded


def pixels(image: Image.Image, spec: Preprocessing = POLICY) -> np.ndarray:
    return to_pixels(image, spec).squeeze(-1).numpy().astype(np.int16)


def test_white_on_black_is_unchanged() -> None:
    original = drawing()
    assert np.array_equal(pixels(round_trip(original)), np.asarray(original))
    assert np.array_equal(pixels(round_trip(original.convert("RGB"))), np.asarray(original))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_black_on_white_is_inverted_to_the_models_polarity(mode: str) -> None:
    original = drawing()
    black_on_white = Image.fromarray(255 - np.asarray(original)).convert(mode)
    assert np.array_equal(pixels(round_trip(black_on_white)), np.asarray(original))


def test_black_on_white_jpeg_is_inverted() -> None:
    original = np.asarray(drawing(), dtype=np.int16)
    black_on_white = round_trip(Image.fromarray((255 - original).astype(np.uint8)), "JPEG")
    assert np.abs(pixels(black_on_white) - original).mean() < 3


@pytest.mark.parametrize("ink", [(0, 0, 0), (200, 30, 30), (20, 40, 160), (255, 255, 255), (250, 220, 0)])
def test_opaque_strokes_on_a_transparent_canvas_are_the_drawing_whatever_their_colour(
    ink: tuple[int, int, int],
) -> None:
    original = drawing()
    strokes = Image.new("RGBA", original.size, (*ink, 0))
    strokes.putalpha(original)  # opaque where the drawing is, transparent elsewhere
    result = pixels(round_trip(strokes))
    alpha = np.asarray(original, dtype=np.float64)
    assert result[alpha == 0].max() == 0  # the transparent canvas is the dark background
    luma = round(0.299 * ink[0] + 0.587 * ink[1] + 0.114 * ink[2])
    contrast = 255 - luma if luma < 128 else luma
    np.testing.assert_allclose(result, alpha * contrast / 255, atol=1.5)  # strokes light, edges kept
    assert result[alpha == 255].min() >= min(contrast, 128)


def test_black_strokes_on_transparent_black_reach_the_model_as_the_canvas() -> None:
    """What the issue saw: a black "3" exported with a transparent background became all black."""
    original = drawing()
    strokes = Image.new("LA", original.size, 0)
    strokes.putalpha(original)
    assert np.abs(pixels(round_trip(strokes)) - np.asarray(original)).max() <= 1


def test_palette_transparency_is_flattened_like_alpha() -> None:
    canvas = Image.new("P", (64, 64), 0)
    canvas.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 white (transparent), 1 black
    ImageDraw.Draw(canvas).rectangle((20, 20, 40, 40), fill=1)
    canvas.info["transparency"] = 0
    result = pixels(round_trip(canvas))
    assert result[30, 30] == 255
    assert result[5, 5] == 0


def test_a_fully_transparent_image_is_dark() -> None:
    assert pixels(Image.new("RGBA", (32, 32), (255, 255, 255, 0))).max() == 0


def test_thick_strokes_covering_most_of_the_image_do_not_flip_the_decision() -> None:
    image = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(image).rectangle((8, 8, 92, 92), fill=0)  # 70 % dark, but the border is white
    assert pixels(image)[50, 50] == 255
    assert pixels(image)[2, 2] == 0


def test_the_border_decides_polarity() -> None:
    light = np.full((40, 50, 1), 200, np.uint8)
    light[10:30, 10:40] = 0
    assert has_light_border(light)
    assert not has_light_border(255 - light)
    assert not has_light_border(np.full((16, 16, 3), 127, np.uint8))  # mid-grey stays as it is


def test_the_border_count_agrees_with_the_median_of_the_ring() -> None:
    """The counting shortcut gives the answer of the rule as written: the ring's median above mid-grey."""

    def median_rule(pixels: np.ndarray) -> bool:
        height, width = pixels.shape[:2]
        ring = max(1, min(4, min(height, width) // 16))
        mask = np.zeros((height, width), bool)
        mask[:ring], mask[-ring:], mask[:, :ring], mask[:, -ring:] = True, True, True, True
        return float(np.median(pixels.mean(axis=2)[mask])) > 127.5

    rng = np.random.default_rng(5)
    for trial in range(640):
        # Small images and, in the last 40 trials, ones past the cached-mask size (both ways of reading).
        low, high = (16, 90) if trial < 600 else (200, 420)
        height, width = (int(n) for n in rng.integers(low, high, 2))
        channels = int(rng.choice([1, 3]))
        if trial % 2:  # values at and around mid-grey, where ties and rounding would show
            image = rng.choice(np.array([0, 127, 128, 255], np.uint8), (height, width, channels))
        else:
            image = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        assert has_light_border(image) == median_rule(image), (height, width, channels)


def test_as_is_policy_keeps_light_backgrounds() -> None:
    black_on_white = Image.fromarray(255 - np.asarray(drawing()))
    assert np.array_equal(pixels(black_on_white, Preprocessing()), np.asarray(black_on_white))


def test_rgb_models_invert_all_channels() -> None:
    spec = Preprocessing("RGB", (0.5,) * 3, (0.25,) * 3, polarity="light_on_dark")
    image = Image.new("RGB", (32, 32), (250, 240, 230))
    assert torch.equal(to_pixels(image, spec)[0, 0], torch.tensor([5, 15, 25], dtype=torch.uint8))


def test_the_bundled_card_records_the_policy() -> None:
    spec = read_card(DEFAULT_MODEL_DIR).preprocessing
    assert spec.polarity == "light_on_dark"
    assert "inverted" in POLARITY_POLICIES[spec.polarity]


def test_cards_without_the_field_load_as_is(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "model")
    path = tmp_path / "model" / CARD_FILE
    data = json.loads(path.read_text())
    del data["preprocessing"]["polarity"]
    path.write_text(json.dumps(data))
    assert read_card(tmp_path / "model").preprocessing.polarity == "as_is"
    data["preprocessing"]["polarity"] = "dark_on_light"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelArtifactError, match="unknown polarity"):
        read_card(tmp_path / "model")
