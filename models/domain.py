"""The in-domain score: does an image look like what the model was trained on?

A classifier answers every image with confident-looking scores, a photo included. This module measures
how far an image's forward pass lies from those of the training canvases, with the Mahalanobis
distance of Lee et al. 2018 ("A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks"), on statistics the forward pass has already computed:

* the backbone features averaged over the whole image (C values): what the image is made of, digit,
  clutter and background together,
* the attention map's normalised entropy and the share of dark input pixels (2 values).

(The attention-pooled vector the classifier reads was tried too: it flagged fewer of the development
out-of-domain images, alone or added to these, since attention finds the most digit-like spot of any
image.)

A Gaussian fitted to training-split canvases gives the distance d (per dimension, so it reads the same
for any feature width); the threshold t is a high quantile of d over validation canvases, never the
test split (``python -m models.calibrate_domain``). The score is ``2 ** -((d / t) ** 4)``: about 1 for a
typical canvas, exactly 0.5 at the threshold, near 0 far beyond it. A second, cheaper piece of
evidence is colour, which the grayscale conversion discards: the share of an upload's pixels with
strong chroma (:func:`colourful_fraction`, measured on the decoded image before conversion) gives a
score of the same form against its own threshold, and an image's score is the lower of the two.

The parameters live beside the weights in ``domain.safetensors``, whose sha256 the card records under
``domain``; :func:`load_domain_scorer` verifies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from models.attention_net import AttentionOutput
from models.checkpoint import ModelArtifactError, ModelCard, Preprocessing, sha256_of

DOMAIN_FILE = "domain.safetensors"
DARK_LEVEL = 0.25  # an input pixel darker than this (of 1.0, after polarity) counts as background
CHROMA_LEVEL = 48  # of 255: a pixel whose channels differ by more than this counts as colourful
WARNING = (
    "This image does not look like what the model was trained on: handwritten digits, drawn as light "
    "strokes on a dark background (or dark on light, which is inverted), each digit about 28 pixels "
    "tall. Its scores for this image are unreliable."
)


@dataclass
class DomainVerdict:
    """Per-image results of :meth:`DomainScorer.score`: scores in [0, 1] and flags, both (B,)."""

    score: Tensor
    in_distribution: Tensor


class DomainScorer:
    """Scores a batch's forward pass against the in-domain Gaussian, on the batch's device.

    Args:
        mean: Mean of the features over the fitting canvases, (D,).
        whitening: W with ‖W (z − mean)‖² the squared Mahalanobis distance, (D, D).
        threshold: Distance (per dimension) at which the score is 0.5.
        colourful_threshold: Share of colourful pixels at which the colour score is 0.5.
        spec: The card's preprocessing, to find dark pixels in the normalised input.
    """

    def __init__(
        self,
        mean: Tensor,
        whitening: Tensor,
        threshold: float,
        colourful_threshold: float,
        spec: Preprocessing,
    ) -> None:
        self.mean = mean.float()
        self.whitening = whitening.float()
        self.threshold = float(threshold)
        self.colourful_threshold = float(colourful_threshold)
        # The dark level in the normalised space of channel 0 (grayscale models have only that one).
        self.dark_level = (DARK_LEVEL - spec.mean[0]) / spec.std[0]

    def to(self, device: torch.device | str) -> DomainScorer:
        """Move the parameters to the model's device (returns self)."""
        self.mean = self.mean.to(device)
        self.whitening = self.whitening.to(device)
        return self

    def features(self, output: AttentionOutput, x: Tensor, input_size: Tensor | None = None) -> Tensor:
        """The (B, D) float32 statistics that the distance is taken over; see the module docstring.

        Args:
            output: The forward pass of the batch.
            x: The normalised input the pass ran on, (B, C, H, W), padded or not.
            input_size: Valid (height, width) of each image when the batch is padded, (B, 2); else None.
        """
        attention = output.attention.float()
        features = output.features.float()  # zero beyond each image's valid grid, as the model leaves it
        cells = output.valid_size.prod(1).clamp(min=1).float()
        average = features.sum((2, 3)) / cells[:, None]
        plogp = torch.special.xlogy(attention, attention).sum((1, 2))
        entropy = -plogp / cells.log().clamp(min=1.0)
        dark = x[:, 0] < self.dark_level
        if input_size is None:
            dark_share = dark.float().mean((1, 2))
        else:
            rows = torch.arange(x.shape[-2], device=x.device).view(1, -1, 1) < input_size[:, :1, None]
            cols = torch.arange(x.shape[-1], device=x.device).view(1, 1, -1) < input_size[:, 1:, None]
            dark_share = (dark & rows & cols).sum((1, 2)) / input_size.prod(1).float()
        return torch.cat([average, entropy[:, None], dark_share[:, None]], dim=1)

    def distance(self, features: Tensor) -> Tensor:
        """Mahalanobis distance per dimension of (B, D) features, (B,)."""
        whitened = (features - self.mean) @ self.whitening.T
        return whitened.square().mean(1).sqrt()

    def score(
        self,
        output: AttentionOutput,
        x: Tensor,
        input_size: Tensor | None = None,
        colourful: Tensor | None = None,
    ) -> DomainVerdict:
        """Scores and flags of a batch, on its device.

        Args:
            output, x, input_size: As :meth:`features`.
            colourful: Each image's :func:`colourful_fraction`, (B,), on any device; None counts as 0.
        """
        return self.with_colour(self.feature_score(self.features(output, x, input_size)), colourful)

    def feature_score(self, features: Tensor) -> Tensor:
        """The score of (B, D) features alone, (B,)."""
        return _score(self.distance(features), self.threshold)

    def with_colour(self, score: Tensor, colourful: Tensor | None) -> DomainVerdict:
        """Combine feature scores (B,) with each image's :func:`colourful_fraction` (B,) into verdicts.

        :meth:`score` calls it; a caller that computes the feature score apart (inside a CUDA graph, say,
        which has no input for the host statistic) calls it on the host copy.
        """
        if colourful is not None:
            colour = _score(colourful.to(score.device, torch.float32), self.colourful_threshold)
            score = torch.minimum(score, colour)
        return DomainVerdict(score, score >= 0.5)

    def with_colour_score(self, score: float, colourful: float) -> float:
        """:meth:`with_colour` for one image, in Python floats: the service calls it per image, where
        making tensors of two numbers would cost more than the arithmetic."""
        colour: float = 2.0 ** -(min(colourful / self.colourful_threshold, 16.0) ** 4)
        return min(score, colour)

    def state(self) -> dict[str, Tensor]:
        return {"mean": self.mean.cpu().contiguous(), "whitening": self.whitening.cpu().contiguous()}


def _score(value: Tensor, threshold: float) -> Tensor:
    """2^−(value/threshold)⁴: 1 at 0, 0.5 at the threshold, about 10⁻⁵ at twice it."""
    return torch.exp2(-((value / threshold).clamp(max=16.0) ** 4))


def colourful_fraction(image: Image.Image) -> float:
    """Share of an image's pixels whose colour channels differ by more than :data:`CHROMA_LEVEL`.

    Measured on the decoded image before it becomes grayscale, on a copy reduced to at most about 64
    pixels a side (Pillow's box reduction, a few microseconds) so a large photo costs no more than a
    canvas. Transparent pixels count as they are stored; images without colour give 0.
    """
    if image.mode not in ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        return 0.0
    factor = max(1, min(image.size) // 64)
    small = image.reduce(factor) if factor > 1 and image.mode in ("RGB", "RGBA", "RGBX") else image
    array = np.asarray(small.convert("RGB"), dtype=np.int16)
    chroma = array.max(axis=2) - array.min(axis=2)
    return float((chroma > CHROMA_LEVEL).mean())


def fit_gaussian(features: Tensor, shrinkage: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Mean and whitening matrix of (N, D) features, the covariance shrunk towards a multiple of the
    identity so that directions the canvases never vary in still get a finite weight."""
    data = features.double()
    mean = data.mean(0)
    centred = data - mean
    covariance = centred.T @ centred / max(len(data) - 1, 1)
    ridge = shrinkage * covariance.diagonal().mean()
    covariance = covariance + ridge * torch.eye(covariance.shape[0], dtype=covariance.dtype)
    # Σ⁻¹ = Lᵀ L with L the inverse of Σ's Cholesky factor, so ‖L (z − μ)‖² = (z − μ)ᵀ Σ⁻¹ (z − μ).
    cholesky = torch.linalg.cholesky(covariance)
    whitening = torch.linalg.solve_triangular(cholesky, torch.eye(len(mean), dtype=data.dtype), upper=False)
    return mean.float(), whitening.float()


def save_domain_scorer(scorer: DomainScorer, directory: Path, card: ModelCard, info: dict[str, Any]) -> None:
    """Write ``domain.safetensors`` and record it, its hash and ``info`` in the card (not yet written)."""
    path = directory / DOMAIN_FILE
    save_file(scorer.state(), str(path), metadata={"name": card.name})
    card.domain = {
        "file": DOMAIN_FILE,
        "sha256": sha256_of(path),
        "threshold": round(scorer.threshold, 6),
        "colourful_threshold": scorer.colourful_threshold,
        "warning": WARNING,
        **info,
    }


def load_domain_scorer(directory: Path, card: ModelCard) -> DomainScorer | None:
    """The card's in-domain scorer, verified against its hash; None for a card without one.

    Raises:
        ModelArtifactError: The file is missing, altered or does not fit the model.
    """
    if not card.domain:
        return None
    try:
        path = directory / str(card.domain["file"])
        expected = str(card.domain["sha256"])
        threshold = float(card.domain["threshold"])
        colourful_threshold = float(card.domain["colourful_threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelArtifactError(f"malformed domain entry in the card: {exc}") from exc
    if not path.is_file():
        raise ModelArtifactError(f"no domain file at {path}")
    actual = sha256_of(path)
    if actual != expected:
        raise ModelArtifactError(
            f"domain file sha256 {actual[:12]}… does not match the card's {expected[:12]}…"
        )
    try:
        state = load_file(str(path))
        mean, whitening = state["mean"], state["whitening"]
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ModelArtifactError(f"domain file {path} is unreadable: {exc}") from exc
    width = card.config.feature_channels + 2
    if mean.shape != (width,) or whitening.shape != (width, width) or not math.isfinite(threshold):
        raise ModelArtifactError("the domain file does not fit the model's feature width")
    return DomainScorer(mean, whitening, threshold, colourful_threshold, card.preprocessing)
