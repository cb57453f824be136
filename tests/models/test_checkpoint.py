"""The model artifact: round trip, hash verification, consistency checks, the bundled default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from models.attention_net import AttentionNet, AttentionNetConfig
from models.checkpoint import (
    CARD_FILE,
    DEFAULT_MODEL_DIR,
    WEIGHTS_FILE,
    ModelArtifactError,
    ModelCard,
    Preprocessing,
    load_model,
    save_model,
    sha256_of,
)


def small_card() -> ModelCard:
    config = AttentionNetConfig(num_classes=3, stages=((8, 2), (8, 2), (8, 1)))
    return ModelCard("tiny", "0.1.0", config, ["a", "b", "c"], Preprocessing())


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    card = small_card()
    torch.manual_seed(0)
    save_model(AttentionNet(card.config), card, tmp_path)
    return tmp_path


def test_round_trip_restores_the_same_function(artifact: Path) -> None:
    torch.manual_seed(0)
    original = AttentionNet(small_card().config).eval()
    loaded, card = load_model(artifact)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x).logits, original(x).logits)
    assert card.labels == ["a", "b", "c"]
    assert card.weights_sha256 == sha256_of(artifact / WEIGHTS_FILE)


def test_tampered_weights_are_refused(artifact: Path) -> None:
    weights = artifact / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError, match="does not match the card"):
        load_model(artifact)


def test_truncated_weights_with_a_matching_hash_are_refused(artifact: Path) -> None:
    weights = artifact / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:200])
    card = json.loads((artifact / CARD_FILE).read_text())
    card["weights"]["sha256"] = sha256_of(weights)
    (artifact / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelArtifactError, match="do not fit"):
        load_model(artifact)


def test_card_that_does_not_match_the_weights_is_refused(artifact: Path) -> None:
    card = json.loads((artifact / CARD_FILE).read_text())
    card["config"]["stages"] = [[16, 2], [8, 2], [8, 1]]
    (artifact / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelArtifactError, match="do not fit"):
        load_model(artifact)


def test_label_count_must_match_the_classes(artifact: Path) -> None:
    card = json.loads((artifact / CARD_FILE).read_text())
    card["labels"] = ["a", "b"]
    (artifact / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelArtifactError, match="2 labels but the config has 3 classes"):
        load_model(artifact)


@pytest.mark.parametrize("missing", [CARD_FILE, WEIGHTS_FILE])
def test_missing_files_are_reported(artifact: Path, missing: str) -> None:
    (artifact / missing).unlink()
    with pytest.raises(ModelArtifactError, match=r"no (model card|weights file)"):
        load_model(artifact)


def test_card_that_is_not_json_is_reported(artifact: Path) -> None:
    (artifact / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelArtifactError, match="not valid JSON"):
        load_model(artifact)


def test_bundled_default_model_is_small_verified_and_evaluated(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "default")
    model, card = load_model(tmp_path / "default")
    assert (DEFAULT_MODEL_DIR / WEIGHTS_FILE).stat().st_size < 2 * 1024 * 1024
    assert card.labels == [str(d) for d in range(10)]
    assert card.preprocessing.color_mode == "L"
    for size in (60, 100):
        metrics = card.evaluation[f"cluttered_{size}x{size}"]
        assert metrics["canvases"] == 1000
        assert {
            "accuracy",
            "per_class_accuracy",
            "attention_map",
            "jpeg_q90_accuracy",
            "rgb_accuracy",
            "bfloat16_accuracy",
        } <= set(metrics)
    assert card.evaluation["cpu_cost"]["batch"] == 16
    assert {"ms_per_image", "ms_per_image_bfloat16"} <= set(card.evaluation["cpu_cost"])
    assert {"command", "device", "duration_s", "seed", "selection"} <= set(card.training)
    assert isinstance(model, AttentionNet)
