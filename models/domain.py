"""The in-domain score: does an image look like what the model was trained on?

A classifier answers every image with confident-looking scores, a photo included. This module measures
how far an image's forward pass lies from those of the training canvases, with the class-conditional
Mahalanobis distance of Lee et al. 2018 ("A Simple Unified Framework for Detecting Out-of-Distribution
Samples and Adversarial Attacks"): one Gaussian per class with a covariance shared by all, the distance
taken to the mean of the class the model predicts. Its statistics are ones the forward pass has already
computed (D = C + 3 + 2·C₁ values):

* the backbone's last features averaged over the whole image (C values): what the image is made of,
  digit, clutter and background together,
* the attention map's normalised entropy, and the largest logit and the logits' log-sum-exp (the
  energy of Liu et al. 2020), which tell how firmly the head answers,
* the square roots of the mean and of the root mean square over the image of each channel of the
  first backbone layer on the feature grid (:attr:`AttentionOutput.grid_features`, 2·C₁ values):
  local stroke statistics, such as width, sharpness and density, in which typeset glyphs and drawings
  differ from handwritten digits. The roots make these skewed, non-negative statistics closer to
  Gaussian.

(The attention-pooled vector the classifier reads was tried too, alone, class-conditional and added to
these: it flagged fewer out-of-domain images, since attention finds the most digit-like spot of any
image. The share of dark pixels, an earlier statistic, adds nothing beside these.)

The Gaussians are fitted to training-split canvases, the class of each being the model's prediction,
as in serving. The distance d is per dimension, so it reads the same for any feature width; the
threshold t is a high quantile of d over validation canvases, never the test split
(``python -m models.calibrate_domain``). The score is ``2 ** -((d / t) ** 4)``: about 1 for a typical
canvas, 0.5 at the threshold, near 0 far beyond it. A second, cheaper piece of evidence is
colour, which the grayscale conversion discards: the share of an upload's pixels with strong chroma
(:func:`colourful_fraction`, measured on the decoded image before conversion) gives a score of the same
form against its own threshold, and an image's score is the lower of the two.

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
from models.checkpoint import ModelArtifactError, ModelCard, sha256_of

DOMAIN_FILE = "domain.safetensors"
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
    """Scores a batch's forward pass against the in-domain Gaussians, on the batch's device.

    Args:
        class_means: Mean of the features over the fitting canvases of each class, (K, D).
        whitening: W with ‖W (z − μ)‖² the squared Mahalanobis distance under the shared covariance,
            (D, D).
        threshold: Distance (per dimension) at which the score is 0.5.
        colourful_threshold: Share of colourful pixels at which the colour score is 0.5.
    """

    def __init__(
        self, class_means: Tensor, whitening: Tensor, threshold: float, colourful_threshold: float
    ) -> None:
        self.class_means = class_means.float()
        self.whitening = whitening.float()
        self.threshold = float(threshold)
        self.colourful_threshold = float(colourful_threshold)
        self._prepare()

    def _prepare(self) -> None:
        """Precompute Wᵀ and the whitened class means, so that a batch costs one product and a gather."""
        self._whitening_t = self.whitening.T.contiguous()
        self._whitened_means = self.class_means @ self._whitening_t

    def to(self, device: torch.device | str) -> DomainScorer:
        """Move the parameters to the model's device (returns self)."""
        self.class_means = self.class_means.to(device)
        self.whitening = self.whitening.to(device)
        self._prepare()
        return self

    @staticmethod
    def features(
        output: AttentionOutput, input_size: Tensor | None = None, top_probability: Tensor | None = None
    ) -> Tensor:
        """The (B, D) float32 statistics that the distance is taken over; see the module docstring.

        About fifteen tensor operations, each over the whole batch, picked for speed on the CPU as
        ``python -m bench.domain_cost`` measures them (a norm or ``var_mean`` over a channels-last map is
        several times slower than squaring and averaging).

        Args:
            output: The forward pass of the batch.
            input_size: Whether the batch is padded: each image's valid (height, width), (B, 2), or None.
                The statistics of a padded image are those of the image alone (the model leaves its
                features zero beyond the valid grid, and the sums are divided by its own grid cells).
            top_probability: Each image's highest softmax probability, (B,), when the caller has it (the
                engine ranks the classes anyway); computed here otherwise.
        """
        grid_features = output.grid_features.float()
        # Sums now, divided by each image's grid cells in one operation below.
        moments = torch.cat(
            [
                output.features.float().sum((2, 3)),
                grid_features.sum((2, 3)),
                (grid_features * grid_features).sum((2, 3)),
            ],
            dim=1,
        )
        attention = output.attention
        if input_size is None:
            cells = attention.shape[-2] * attention.shape[-1]
            moments.mul_(1.0 / cells)
            entropy_scale: Tensor | float = -1.0 / max(math.log(cells), 1.0)
        else:
            valid_cells = output.valid_size.prod(1, keepdim=True).clamp(min=1).float()
            moments.div_(valid_cells)
            entropy_scale = -1.0 / valid_cells[:, 0].log().clamp(min=1.0)
        channels, grid_channels = output.features.shape[1], grid_features.shape[1]
        grid_mean = moments[:, channels : channels + grid_channels]
        grid_square = moments[:, channels + grid_channels :]
        grid_mean.sqrt_()
        grid_square.pow_(0.25)  # the root of the root mean square
        entropy = torch.special.xlogy(attention, attention).sum((1, 2)).mul_(entropy_scale)
        logits = output.logits.float()
        if top_probability is None:
            top_probability = torch.softmax(logits, 1).amax(1)
        top = logits.amax(1, keepdim=True)
        # The energy log Σ exp(logit) is the top logit less the log of its softmax probability (≥ 1/K).
        energy = top - top_probability[:, None].log()
        return torch.cat([moments, entropy[:, None], top, energy], dim=1)

    def distance(self, features: Tensor, classes: Tensor) -> Tensor:
        """Mahalanobis distance per dimension of (B, D) features to their classes' means, (B,).

        Args:
            features: As :meth:`features` gives them.
            classes: The predicted class of each image, (B,).
        """
        whitened = torch.addmm(
            self._whitened_means.index_select(0, classes), features, self._whitening_t, beta=-1
        )
        norms: Tensor = torch.linalg.vector_norm(whitened, dim=1)
        return norms.div_(math.sqrt(features.shape[1]))

    def score(
        self, output: AttentionOutput, input_size: Tensor | None = None, colourful: Tensor | None = None
    ) -> DomainVerdict:
        """Scores and flags of a batch, on its device.

        Args:
            output, input_size: As :meth:`features`.
            colourful: Each image's :func:`colourful_fraction`, (B,), on any device; None counts as 0.
        """
        return self.with_colour(self.output_score(output, input_size), colourful)

    def output_score(
        self,
        output: AttentionOutput,
        input_size: Tensor | None = None,
        top: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """The score of a forward pass alone, before colour, (B,): what the engine computes per batch.

        Args:
            output, input_size: As :meth:`features`.
            top: Each image's highest softmax probability and its class, (B,) each, when the caller has
                ranked the classes already; computed here otherwise.
        """
        if top is None:
            top = torch.softmax(output.logits.float(), 1).max(1)
        probability, classes = top
        return self.feature_score(self.features(output, input_size, probability), classes)

    def feature_score(self, features: Tensor, classes: Tensor) -> Tensor:
        """The score of (B, D) features of images of the given predicted classes alone, (B,)."""
        distance = self.distance(features, classes)
        # 2^-(d/t)^4 in three operations; a distance too large to raise to the 4th gives inf, then 0.
        return torch.exp2(distance.pow_(4).mul_(-(self.threshold**-4)))

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
        return {
            "class_means": self.class_means.cpu().contiguous(),
            "whitening": self.whitening.cpu().contiguous(),
        }


def _sum_of_squares(maps: Tensor) -> Tensor:
    """Σ x² over each (B, C, h, w) map's grid, (B, C) float32, without a squared copy of the maps."""
    norms: Tensor = torch.linalg.vector_norm(maps, dim=(2, 3), dtype=torch.float32)
    return norms.square_()


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


def fit_class_gaussians(
    features: Tensor, classes: Tensor, num_classes: int, shrinkage: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """Class means (K, D) and the whitening matrix (D, D) of the within-class covariance shared by all
    classes, of (N, D) features of the given classes (N,). The covariance is shrunk towards a multiple of
    the identity so that directions the canvases never vary in still get a finite weight."""
    data = features.double()
    counts = torch.bincount(classes, minlength=num_classes)
    if bool((counts == 0).any()):
        raise ValueError(f"no fitting canvases for classes {torch.nonzero(counts == 0).flatten().tolist()}")
    means = torch.zeros(num_classes, data.shape[1], dtype=data.dtype).index_add_(0, classes, data)
    means /= counts[:, None]
    centred = data - means[classes]
    covariance = centred.T @ centred / max(len(data) - num_classes, 1)
    ridge = shrinkage * covariance.diagonal().mean()
    covariance = covariance + ridge * torch.eye(covariance.shape[0], dtype=covariance.dtype)
    # Σ⁻¹ = Lᵀ L with L the inverse of Σ's Cholesky factor, so ‖L (z − μ)‖² = (z − μ)ᵀ Σ⁻¹ (z − μ).
    cholesky = torch.linalg.cholesky(covariance)
    eye = torch.eye(data.shape[1], dtype=data.dtype)
    whitening = torch.linalg.solve_triangular(cholesky, eye, upper=False)
    return means.float(), whitening.float()


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
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ModelArtifactError(f"domain file {path} is unreadable: {exc}") from exc
    if set(state) != {"class_means", "whitening"}:
        raise ModelArtifactError(
            f"domain file {path} holds {sorted(state)}, not this scorer's class_means and whitening (a file "
            "from an earlier version of the score): refit it with python -m models.calibrate_domain"
        )
    class_means, whitening = state["class_means"], state["whitening"]
    width = feature_width(card)
    classes = card.config.num_classes
    if (
        class_means.shape != (classes, width)
        or whitening.shape != (width, width)
        or not math.isfinite(threshold)
    ):
        raise ModelArtifactError("the domain file does not fit the model's classes and feature widths")
    return DomainScorer(class_means, whitening, threshold, colourful_threshold)


def feature_width(card: ModelCard) -> int:
    """D, the number of statistics :meth:`DomainScorer.features` gives for the card's model."""
    return card.config.feature_channels + 3 + 2 * card.config.grid_layer_channels
