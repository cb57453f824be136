"""Fit and calibrate the in-domain score (models/domain.py), and measure it.

1. Fit: the class means and shared covariance of the score's features over training-split canvases
   drawn as in training (sizes 40–128, 0 to 10 clutter fragments, rotations, shears, elastic
   distortion, JPEG on a fifth), each canvas under the class the model predicts for it.
2. Calibrate: the threshold is the 99.5th percentile of the distance over validation-split canvases
   (60×60 and 100×100 as PNG, JPEG q90 and dark-on-light JPEG, plus sizes 40–128). The colour
   threshold is fixed by design (a quarter of the pixels colourful).
3. Measure, with the threshold fixed: the share flagged of the test-split canvases at 60×60 and
   100×100 in every variant ``models.evaluate`` reports, and of the out-of-domain families: the
   development and first held-out families of models/outliers.py, and the evaluation families of
   models/outliers_evaluation.py, which no design was chosen on.

Example::

    python -m models.calibrate_domain models/default --write --results scripts/domain-calibration-results.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from models.attention_net import AttentionNet
from models.checkpoint import ModelCard, load_model, write_card
from models.data import compose_canvases, default_fragments, fixed_canvases, load_mnist_splits
from models.domain import DomainScorer, colourful_fraction, fit_class_gaussians, save_domain_scorer
from models.evaluate import TEST_SEED, jpeg, polarity_variants
from models.outliers import DEVELOPMENT_FAMILIES, HELD_OUT_FAMILIES, render
from models.outliers_evaluation import EVALUATION_FAMILIES, EVALUATION_SEED
from models.preprocessing import normalize_pixels, to_pixels
from models.train import augment_digits, jpeg_round_trip

QUANTILE = 0.995
COLOURFUL_THRESHOLD = 0.25
VALIDATION_SEED = 7000  # not the seeds training selected on (1000k + size), nor the test seed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", type=Path, nargs="?", default=Path("models/default"))
    parser.add_argument("--fit-batches", type=int, default=80, help="batches of 128 training canvases")
    parser.add_argument("--per-family", type=int, default=60, help="out-of-domain images per family")
    parser.add_argument("--write", action="store_true", help="store the scorer and figures in the artifact")
    parser.add_argument("--results", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--dump", type=Path, help="save every feature matrix here (torch.save), to study")
    return parser.parse_args(argv)


Features = tuple[Tensor, Tensor]  # the score's statistics (N, D) and each image's predicted class (N,)


class Measure:
    """Runs images through the serving preprocessing and the model, and gives the score's features."""

    def __init__(self, model: AttentionNet, card: ModelCard, scorer: DomainScorer | None = None) -> None:
        self.model, self.card, self.scorer = model, card, scorer

    def _features(self, x: Tensor) -> Features:
        output = self.model(x)
        probability, classes = torch.softmax(output.logits, 1).max(1)
        return DomainScorer.features(output, None, probability), classes

    @torch.inference_mode()
    def canvas_features(self, canvases: Tensor) -> Features:
        """Features of (N, S, S) uint8 canvases, in batches."""
        parts = []
        for start in range(0, len(canvases), 256):
            pixels = canvases[start : start + 256].unsqueeze(-1)
            parts.append(self._features(normalize_pixels(pixels, self.card.preprocessing).contiguous()))
        return torch.cat([f for f, _ in parts]), torch.cat([c for _, c in parts])

    @torch.inference_mode()
    def image_features(self, images: Iterable[Image.Image]) -> tuple[Features, Tensor]:
        """Features and colourful fractions of decoded images of any sizes, batched by size."""
        by_size: dict[tuple[int, ...], list[tuple[int, Tensor]]] = {}
        colour = []
        for index, image in enumerate(images):
            pixels = to_pixels(image, self.card.preprocessing)
            by_size.setdefault(tuple(pixels.shape), []).append((index, pixels))
            colour.append(colourful_fraction(image))
        rows: dict[int, tuple[Tensor, Tensor]] = {}
        for members in by_size.values():
            for start in range(0, len(members), 256):
                chunk = members[start : start + 256]
                x = normalize_pixels(torch.stack([p for _, p in chunk]), self.card.preprocessing).contiguous()
                features, classes = self._features(x)
                rows.update({i: (f, c) for (i, _), f, c in zip(chunk, features, classes, strict=True)})
        ordered = [rows[i] for i in range(len(rows))]
        stacked = torch.stack([f for f, _ in ordered]), torch.stack([c for _, c in ordered])
        return stacked, torch.tensor(colour)

    def distance(self, features: Features) -> Tensor:
        assert self.scorer is not None
        return self.scorer.distance(*features)

    def flagged(self, features: Features, colour: Tensor | None = None) -> float:
        assert self.scorer is not None
        verdict = self.scorer.with_colour(self.scorer.feature_score(*features), colour)
        return round(float((~verdict.in_distribution).float().mean()), 4)


def training_canvases(digits: Tensor, batches: int, generator: torch.Generator) -> Iterable[Tensor]:
    """Canvases drawn as training draws them, one size a batch, as uint8."""
    for _ in range(batches):
        size = int(torch.randint(40, 129, (1,), generator=generator))
        fragments = max(0, default_fragments(size) + int(torch.randint(-4, 3, (1,), generator=generator)))
        index = torch.randint(len(digits), (128,), generator=generator)
        augmented = augment_digits(digits[index], generator, 1.0, 34.0)
        canvas, _ = compose_canvases(augmented, digits, size, fragments, generator)
        if float(torch.rand(1, generator=generator)) < 0.2:
            canvas = jpeg_round_trip(canvas, generator)
        yield (canvas * 255).round().clamp(0, 255).to(torch.uint8)


def validation_features(measure: Measure, split: Any, generator: torch.Generator) -> dict[str, Features]:
    """Features of the validation canvases the threshold is set on, by variant."""
    groups: dict[str, Features] = {}
    for size in (60, 100):
        canvases = torch.cat(
            [fixed_canvases(split, size, seed=VALIDATION_SEED + 10 * k + size).images for k in range(4)]
        )
        groups[f"{size}x{size} PNG"] = measure.canvas_features(canvases)
        pictures = [Image.fromarray(array, mode="L") for array in canvases[:500].numpy()]
        groups[f"{size}x{size} JPEG q90"] = measure.image_features(jpeg(p) for p in pictures)[0]
        dark_on_light = polarity_variants(pictures[:250])["black_on_white_jpeg_q90"]
        groups[f"{size}x{size} dark on light JPEG q90"] = measure.image_features(dark_on_light)[0]
    other = []
    for _ in range(8):
        size = int(torch.randint(40, 129, (1,), generator=generator))
        other.append(
            measure.canvas_features(
                fixed_canvases(
                    split, size, seed=int(torch.randint(1 << 30, (1,), generator=generator))
                ).images
            )
        )
    groups["sizes 40-128 PNG"] = torch.cat([f for f, _ in other]), torch.cat([c for _, c in other])
    return groups


def test_variants(split: Any, size: int) -> dict[str, list[Image.Image]]:
    """The test canvases of one size in every variant models.evaluate reports."""
    canvases = fixed_canvases(split, size, seed=TEST_SEED + size)
    pictures = [Image.fromarray(array, mode="L") for array in canvases.images.numpy()]
    return {
        "PNG": pictures,
        "JPEG q90": [jpeg(p) for p in pictures],
        "RGB": [p.convert("RGB") for p in pictures],
        **{name.replace("_", " "): images for name, images in polarity_variants(pictures).items()},
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model, card = load_model(args.model_dir, "cpu")
    model.fuse_for_inference()
    splits = load_mnist_splits()
    generator = torch.Generator().manual_seed(args.seed)
    measure = Measure(model, card)

    train_digits = splits["train"].images.float() / 255
    parts = [measure.canvas_features(c) for c in training_canvases(train_digits, args.fit_batches, generator)]
    fit = torch.cat([f for f, _ in parts]), torch.cat([c for _, c in parts])
    class_means, whitening = fit_class_gaussians(*fit, card.config.num_classes)
    scorer = DomainScorer(class_means, whitening, 1.0, COLOURFUL_THRESHOLD)
    measure.scorer = scorer

    validation = validation_features(measure, splits["validation"], generator)
    distances = torch.cat([measure.distance(f) for f in validation.values()])
    scorer.threshold = float(torch.quantile(distances, QUANTILE))

    figures: dict[str, Any] = {
        "fit": f"{len(fit[0])} training-split canvases, sizes 40-128, drawn as in training, each under "
        "the class the model predicts for it",
        "threshold_rule": f"the {QUANTILE:.1%} quantile of the distance over {len(distances)} validation "
        "canvases",
        "validation_flagged": {name: measure.flagged(f) for name, f in validation.items()},
        "test_flagged": {},
    }
    dumped: dict[str, tuple[Features, Tensor]] = {}
    for size in (60, 100):
        for name, images in test_variants(splits["test"], size).items():
            features, colour = measure.image_features(images)
            figures["test_flagged"][f"{size}x{size} {name}"] = measure.flagged(features, colour)
            dumped[f"test {size}x{size} {name}"] = (features, colour)
    for label, families, seed in (
        ("development_families_flagged", DEVELOPMENT_FAMILIES, args.seed + 1),
        ("held_out_families_flagged", HELD_OUT_FAMILIES, args.seed + 2),
        ("evaluation_families_flagged", EVALUATION_FAMILIES, EVALUATION_SEED),
    ):
        figures[label] = {}
        for name, images in render(families, args.per_family, seed).items():
            features, colour = measure.image_features(images)
            figures[label][name] = measure.flagged(features, colour)
            dumped[f"{label} {name}"] = (features, colour)
        figures[label]["all"] = round(float(np.mean(list(figures[label].values()))), 4)
    figures["images_per_family"] = args.per_family
    if args.dump:
        torch.save({"fit": fit, "validation": validation, "dumped": dumped}, args.dump)
    print(json.dumps(figures, indent=2))
    if args.results:
        args.results.write_text(json.dumps(figures, indent=2) + "\n")
    if args.write:
        save_domain_scorer(scorer, args.model_dir, card, {"calibration": figures})
        write_card(card, args.model_dir)


if __name__ == "__main__":
    main()
