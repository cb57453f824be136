"""The training and evaluation commands, end to end on small data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import evaluate, train
from models.checkpoint import DEFAULT_MODEL_DIR, load_model
from models.data import DigitSplit, fixed_canvases, load_mnist_splits
from models.evaluate import map_quality, predict_with_maps
from models.preprocessing import to_model_input


def make_folder(root: Path) -> None:
    """Two classes a tiny CNN tells apart: a bright square and a bright bar, at random places."""
    rng = np.random.default_rng(0)
    for name in ("bar", "square"):
        (root / name).mkdir(parents=True)
        for index in range(12):
            image = np.zeros((40, 40, 3), dtype=np.uint8)
            y, x = rng.integers(4, 24, size=2)
            if name == "square":
                image[y : y + 12, x : x + 12] = (255, 200, 50)
            else:
                image[y : y + 4, x : x + 14] = (50, 200, 255)
            Image.fromarray(image).save(root / name / f"{index}.png")


def test_trains_on_a_user_image_folder(tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    out = tmp_path / "model"
    train.main(
        ["--data", "folder", "--folder", str(tmp_path / "data"), "--image-size", "32", "--out", str(out),
         "--epochs", "25", "--batch-size", "8", "--stages", "[[8,2],[16,2],[16,1]]", "--quiet",
         "--device", "cpu", "--name", "shapes"]
    )  # fmt: skip
    model, card = load_model(out)
    assert card.name == "shapes"
    assert card.labels == ["bar", "square"]
    assert card.preprocessing.color_mode == "RGB"
    assert card.config.in_channels == 3
    assert card.training["data"]["train_images"] + card.training["data"]["validation_images"] == 24
    # Served at a size it was not trained at: the network is fully convolutional.
    with Image.open(tmp_path / "data" / "square" / "0.png") as square:
        x = to_model_input(square, card.preprocessing).unsqueeze(0)
    assert model(x).logits.shape == (1, 2)
    assert card.training["validation_error"] <= 0.5


def test_distils_from_an_ensemble_of_trained_teachers(tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    common = ["--data", "folder", "--folder", str(tmp_path / "data"), "--image-size", "32", "--batch-size",
              "8", "--stages", "[[8,2],[16,2],[16,1]]", "--quiet", "--device", "cpu"]  # fmt: skip
    for seed in ("1", "2"):
        train.main([*common, "--out", str(tmp_path / f"teacher{seed}"), "--epochs", "25", "--seed", seed])
    teachers = [load_model(tmp_path / f"teacher{seed}")[0] for seed in ("1", "2")]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        target = train.ensemble_probabilities(teachers, x)
        expected = sum(torch.softmax(t(x).logits / 2.0, 1) for t in teachers) / 2
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(target.sum(1), torch.ones(3))

    out = tmp_path / "student"
    train.main([*common, "--out", str(out), "--epochs", "25", "--distill-weight", "0.7",
                "--teachers", str(tmp_path / "teacher1"), str(tmp_path / "teacher2")])  # fmt: skip
    _, card = load_model(out)
    assert card.training["distilled_from"] == [str(tmp_path / "teacher1"), str(tmp_path / "teacher2")]
    assert card.training["validation_error"] <= 0.5
    with pytest.raises(SystemExit, match="alternatives"):
        train.main([*common, "--out", str(tmp_path / "x"), "--teachers", str(tmp_path / "teacher1"),
                    "--teacher-stages", "[[8,2]]"])  # fmt: skip


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    assert train.learning_rate(1.0, 0.0) == 0.0
    assert train.learning_rate(1.0, 0.05) == pytest.approx(1.0)
    assert train.learning_rate(1.0, 0.5) < 1.0
    assert train.learning_rate(1.0, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_fresh_validation_canvases_keep_the_digits_and_change_the_canvases() -> None:
    digits = DigitSplit(
        torch.randint(0, 256, (6, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8),
        torch.arange(6),
    )
    selected = train.validation_canvases(digits)
    fresh = train.validation_canvases(digits, per_digit=8, seed_offset=100_000)
    assert [len(labels) for _, labels in selected] == [24, 24]
    assert [len(labels) for _, labels in fresh] == [48, 48]
    for (images, labels), (fresh_images, fresh_labels) in zip(selected, fresh, strict=True):
        assert torch.equal(fresh_labels, labels.repeat(2))
        assert not torch.equal(fresh_images[:24], images)
    again = train.validation_canvases(digits, per_digit=8, seed_offset=100_000)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(fresh, again, strict=True))


def test_map_quality_scores_known_maps() -> None:
    maps = torch.zeros(2, 20, 20)
    maps[0, 5, 5] = 1.0  # inside the box
    maps[1, 15, 15] = 3.0  # outside, beyond the 2-px tolerance
    maps[1, 6, 6] = 1.0
    boxes = torch.tensor([[2, 2, 10, 10], [2, 2, 10, 10]])
    assert map_quality(maps, boxes) == {"pointing_game": 0.5, "energy_in_box": 0.625}


def test_pointing_tolerance_is_two_pixels() -> None:
    maps = torch.zeros(2, 20, 20)
    maps[0, 5, 11] = 1.0  # box x1 is 10 (exclusive): 2 px to the right of the last column
    maps[1, 5, 12] = 1.0  # 3 px: a miss
    boxes = torch.tensor([[2, 2, 10, 10], [2, 2, 10, 10]])
    assert map_quality(maps, boxes)["pointing_game"] == 0.5


def test_bundled_model_on_fresh_test_canvases() -> None:
    """A regression check on canvases the card's evaluation did not use (other seed)."""
    model, card = load_model(DEFAULT_MODEL_DIR)
    canvases = fixed_canvases(load_mnist_splits()["test"], 60, seed=77)
    images = [Image.fromarray(a, mode="L") for a in canvases.images[:400].numpy()]
    inputs = torch.stack([to_model_input(image, card.preprocessing) for image in images])
    predictions, attention, _ = predict_with_maps(model, inputs, canvases.labels[:400])
    assert float((predictions == canvases.labels[:400]).float().mean()) >= 0.96
    quality = map_quality(attention, canvases.boxes[:400])
    assert quality["pointing_game"] >= 0.98
    assert quality["energy_in_box"] >= 0.75


def test_evaluate_command_reports_both_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    evaluate.main([str(DEFAULT_MODEL_DIR), "--sizes", "60", "--skip-timing"])
    out = capsys.readouterr().out
    assert '"cluttered_60x60"' in out
    assert '"pointing_game"' in out
