"""PNG encoding of heatmaps and overlays: Glimpse's zlib writer against Pillow, time and size.

The maps are the service's own: the bundled model's evidence map of ``bench/canvas60.png`` (one
bright region, the rest zero, as trained attention maps are), and dense random feature-grid maps
(stride 4) resampled and scaled by ``render_heatmaps``, with an RGB image made from each. Pillow runs
as the service used it before: stored up to 64×64 pixels, level 1 above. One thread; the median of
five timings.

Then what it is worth end to end without HTTP: the in-process ``/attention-map`` ceiling (decode →
batched forward → map → PNG → JSON, batch 32, one thread) with each encoder, and the ``/predict``
ceiling beside them, in alternating rounds so that a shared machine's drift hits all three alike.

    python -m bench.png_encode
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from unittest.mock import patch

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from app.engine.work import MapRequest
from app.pipeline.imaging import convert_image, encode_png, open_image
from bench.inprocess import InProcess, build_predictor, ceiling
from models.checkpoint import DEFAULT_MODEL_DIR
from models.maps import render_heatmaps

PILLOW_STORED_MAX_PIXELS = 64 * 64
CANVAS = Path(__file__).with_name("canvas60.png")


def pillow_png(array: NDArray[np.uint8]) -> bytes:
    """What the service did before: Pillow at level 0 for small maps, 1 otherwise."""
    buffer = io.BytesIO()
    level = 0 if array.shape[0] * array.shape[1] <= PILLOW_STORED_MAX_PIXELS else 1
    Image.fromarray(array).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def microseconds(encode: Callable[[], bytes], repeat: int) -> float:
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            encode()
        timings.append((time.perf_counter() - started) / repeat * 1e6)
    return statistics.median(timings)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    print(f"# python -m bench.png_encode; {platform.machine()}, {os.cpu_count()} cores, one thread")
    columns = ("Pillow µs", "Glimpse µs", "speed-up", "Pillow B", "Glimpse B")
    print(f"{'image':>18} " + " ".join(f"{c:>10}" for c in columns))
    predictor = build_predictor(DEFAULT_MODEL_DIR, torch.device("cpu"), batch=32)
    for label, heat in [("60x60 model", model_map(predictor)), *dense_maps()]:
        rgb = np.stack([heat, 255 - heat, heat // 2], axis=-1)
        for name, array in (("heat", heat), ("rgb", rgb)):
            ours, theirs = encode_png(array), pillow_png(array)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(ours))), array)
            repeat = max(5, 200_000 // array.size)
            pillow_us = microseconds(partial(pillow_png, array), repeat)
            glimpse_us = microseconds(partial(encode_png, array), repeat)
            row = f"{label} {name}"
            print(
                f"{row:>18} {pillow_us:10.0f} {glimpse_us:10.0f} {pillow_us / glimpse_us:9.1f}x"
                f" {len(theirs):10d} {len(ours):10d}"
            )
    ceilings(predictor)


def model_map(predictor: InProcess) -> NDArray[np.uint8]:
    image = convert_image(open_image(CANVAS.read_bytes(), 1 << 26, 16), predictor.card.preprocessing)
    prediction = predictor.engine.forward.forward_batch([image.pixels], [1], [MapRequest("evidence")])[0]
    assert prediction.heat is not None
    return prediction.heat


def dense_maps() -> list[tuple[str, NDArray[np.uint8]]]:
    maps = []
    for size in (60, 100, 224, 512):
        heat = render_heatmaps(torch.rand(1, size // 4, size // 4) ** 4, size, size, 4)[0].numpy()
        maps.append((f"{size}x{size} dense", heat))
    return maps


def ceilings(predictor: InProcess, rounds: int = 8, seconds: float = 1.5) -> None:
    data = CANVAS.read_bytes()
    figures: dict[str, list[float]] = {"predict": [], "attention, Pillow": [], "attention, Glimpse": []}
    for _ in range(rounds):
        figures["predict"].append(ceiling(predictor, data, 32, seconds, attention=False))
        with patch("app.pipeline.answers.encode_png", pillow_png):
            figures["attention, Pillow"].append(ceiling(predictor, data, 32, seconds, attention=True))
        figures["attention, Glimpse"].append(ceiling(predictor, data, 32, seconds, attention=True))
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(f"# in-process ceilings, 60x60 canvas, batch 32, one torch thread, median of {rounds} rounds")
    for name, value in medians.items():
        spread = f"{min(figures[name]):.0f}-{max(figures[name]):.0f}"
        print(f"{name:>20} {value:7.0f} images/s  ({spread})  {value / medians['predict']:.2f}x predict")


if __name__ == "__main__":
    main()
