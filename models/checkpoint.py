"""The self-describing model artifact: safetensors weights plus a JSON model card.

A model directory holds ``model.safetensors`` and ``card.json``, and may hold ``domain.safetensors``,
the in-domain score's parameters (models/domain.py). The card names the architecture and its config,
the label names, the preprocessing, the training data and seed, the evaluation metrics and the sha256
of each tensor file; :func:`load_model` refuses weights whose hash or tensor shapes do not match the
card, :func:`models.domain.load_domain_scorer` likewise the domain file. Nothing here unpickles:
safetensors stores raw tensors only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.attention_net import AttentionNet, AttentionNetConfig

CARD_FORMAT = "glimpse-model-card/1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"


POLARITY_POLICIES = {
    "as_is": "pixels as decoded; transparent pixels are flattened onto the background that contrasts "
    "with the opaque ones",
    "light_on_dark": "the model reads light strokes on a dark background: transparent pixels are "
    "flattened onto the background that contrasts with the opaque ones (so the opaque strokes are the "
    "drawing, whatever their colour), then an image whose border is light (median luminance of the "
    "outer pixels above mid-grey) is inverted",
}


class ModelArtifactError(RuntimeError):
    """The model directory is missing, incomplete, tampered with or inconsistent."""


@dataclass
class Preprocessing:
    """How an image becomes the network's input; stored in the card so serving repeats it exactly."""

    color_mode: str = "L"  # Pillow mode the image is converted to: "L" (1 channel) or "RGB" (3)
    mean: tuple[float, ...] = (0.1,)  # per channel, after scaling pixels to [0, 1]
    std: tuple[float, ...] = (0.3,)
    size_policy: str = "native"  # "native": any size at or above min_size, no resizing
    min_size: int = 16
    # "as_is" or "light_on_dark" (see POLARITY_POLICIES); cards written before the field read "as_is"
    polarity: str = "as_is"

    def __post_init__(self) -> None:
        if self.polarity not in POLARITY_POLICIES:
            expected = ", ".join(sorted(POLARITY_POLICIES))
            raise ValueError(f"unknown polarity {self.polarity!r}; expected one of {expected}")

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3


@dataclass
class ModelCard:
    name: str
    version: str
    config: AttentionNetConfig
    labels: list[str]
    preprocessing: Preprocessing
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    # The in-domain score's parameters file, its sha256, threshold and calibration (models/domain.py);
    # empty for a model without one.
    domain: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CARD_FORMAT,
            "name": self.name,
            "version": self.version,
            "architecture": "AttentionNet",
            "config": self.config.to_dict(),
            "labels": self.labels,
            "preprocessing": asdict(self.preprocessing),
            "training": self.training,
            "evaluation": self.evaluation,
            "weights": {"file": WEIGHTS_FILE, "sha256": self.weights_sha256},
            **({"domain": self.domain} if self.domain else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelCard:
        if data.get("format") != CARD_FORMAT:
            raise ModelArtifactError(
                f"unsupported card format {data.get('format')!r}; expected {CARD_FORMAT}"
            )
        if data.get("architecture") != "AttentionNet":
            raise ModelArtifactError(f"unsupported architecture {data.get('architecture')!r}")
        try:
            preprocessing = dict(data["preprocessing"])
            for key in ("mean", "std"):
                preprocessing[key] = tuple(float(v) for v in preprocessing[key])
            card = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                config=AttentionNetConfig.from_dict(data["config"]),
                labels=[str(label) for label in data["labels"]],
                preprocessing=Preprocessing(**preprocessing),
                training=dict(data.get("training", {})),
                evaluation=dict(data.get("evaluation", {})),
                weights_sha256=str(data["weights"]["sha256"]),
                domain=dict(data.get("domain", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelArtifactError(f"malformed model card: {exc}") from exc
        if len(card.labels) != card.config.num_classes:
            raise ModelArtifactError(
                f"card lists {len(card.labels)} labels but the config has {card.config.num_classes} classes"
            )
        if card.preprocessing.channels != card.config.in_channels:
            raise ModelArtifactError("card preprocessing channels do not match the config's in_channels")
        return card


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_card(card: ModelCard, directory: Path) -> None:
    (directory / CARD_FILE).write_text(json.dumps(card.to_json(), indent=2) + "\n")


def save_model(model: AttentionNet, card: ModelCard, directory: Path) -> ModelCard:
    """Write the weights and the card (with the weights' hash) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    weights = directory / WEIGHTS_FILE
    save_file(state, str(weights), metadata={"format": CARD_FORMAT, "name": card.name})
    card.weights_sha256 = sha256_of(weights)
    write_card(card, directory)
    return card


def read_card(directory: Path) -> ModelCard:
    path = directory / CARD_FILE
    if not path.is_file():
        raise ModelArtifactError(f"no model card at {path}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelArtifactError(f"model card {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelArtifactError(f"model card {path} is not a JSON object")
    return ModelCard.from_json(data)


def load_model(directory: Path, device: torch.device | str = "cpu") -> tuple[AttentionNet, ModelCard]:
    """Rebuild the model from its directory, verifying the weights against the card.

    Raises:
        ModelArtifactError: If a file is missing, the hash differs, or the tensors don't fit the config.
    """
    card = read_card(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelArtifactError(f"no weights file at {weights}")
    actual = sha256_of(weights)
    if actual != card.weights_sha256:
        raise ModelArtifactError(
            f"weights sha256 {actual[:12]}… does not match the card's {card.weights_sha256[:12]}…"
        )
    model = AttentionNet(card.config)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ModelArtifactError(f"weights do not fit the card's architecture: {exc}") from exc
    return model.to(device).eval(), card
