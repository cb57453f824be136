"""The ``glimpse`` command end to end, as a user runs it: a subprocess against the real service on uvicorn
(with an API key), and against a port where nothing listens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from glimpse import cli
from glimpse import client as glimpse_client
from tests.helpers import E2E_API_KEY, REPO_ROOT
from tests.serving import free_port

EXAMPLES = REPO_ROOT / "examples"
CARD = json.loads((REPO_ROOT / "models" / "default" / "card.json").read_text())


def glimpse(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run the command with GLIMPSE_* taken from ``env`` only."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_")} | (env or {})
    command = [sys.executable, "-m", "glimpse", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120)


@pytest.fixture
def env(server: str) -> dict[str, str]:
    return {"GLIMPSE_URL": server, "GLIMPSE_API_KEY": E2E_API_KEY}


def test_predict_prints_a_table(env: dict[str, str]) -> None:
    done = glimpse("predict", "examples/digit42.png", "examples/digit903.png", "--top-k", "2", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["image", "rank", "label", "score"]
    assert len(lines) == 1 + 2 * 2
    first, second, third = lines[1].split(), lines[2].split(), lines[3].split()
    assert first[:3] == ["examples/digit42.png", "1", "0"]
    assert second[:1] == ["2"]  # the image is named once, on its first row
    assert third[:3] == ["examples/digit903.png", "1", "9"]
    assert 0 < float(first[3]) <= 1


def test_flags_instead_of_the_environment(server: str) -> None:
    done = glimpse(
        "predict", EXAMPLES / "digit903.png", "--url", server, "--api-key", E2E_API_KEY, "--top-k", "1"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[1:3] == ["1", "9"]


def test_explain_saves_the_overlay(env: dict[str, str], tmp_path: Path) -> None:
    out, heatmap = tmp_path / "overlay.png", tmp_path / "heatmap.png"
    done = glimpse(
        "explain", EXAMPLES / "digit42.png", "--target", "3", "--out", out, "--heatmap", heatmap, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{out}: evidence for class 3 over ")
    assert "(60×60); top class 0 at 0." in done.stdout
    with Image.open(out) as overlay, Image.open(heatmap) as heat:
        assert (overlay.format, overlay.mode, overlay.size) == ("PNG", "RGB", (60, 60))
        assert (heat.mode, heat.size) == ("L", (60, 60))


def test_explain_defaults_to_overlay_png_here(env: dict[str, str], tmp_path: Path) -> None:
    done = glimpse("explain", EXAMPLES / "digit903.png", "--kind", "attention", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("overlay.png: attention for class 9")
    assert (tmp_path / "overlay.png").exists()


def test_models_describes_the_served_model(env: dict[str, str]) -> None:
    done = glimpse("models", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{CARD['name']} {CARD['version']}"
    assert lines[1] == "labels: " + " ".join(CARD["labels"])
    accuracy = CARD["evaluation"]["cluttered_60x60"]["accuracy"]
    assert any(line.split()[:2] == ["cluttered_60x60", f"{accuracy:.1%}"] for line in lines)


def test_an_api_error_is_one_line_and_exit_1(env: dict[str, str]) -> None:
    done = glimpse("models", env=env | {"GLIMPSE_API_KEY": "wrong"})
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == "glimpse: 401 unauthorized: invalid API key\n"


def test_a_bad_file_among_good_ones(env: dict[str, str]) -> None:
    done = glimpse("predict", "examples/digit42.png", "README.md", "missing.png", env=env)
    assert done.returncode == 1
    assert done.stdout.splitlines()[1].split()[:3] == ["examples/digit42.png", "1", "0"]  # still answered
    errors = done.stderr.splitlines()
    assert errors[0].startswith("glimpse: README.md: 415 unsupported_image: ")
    assert errors[1] == "glimpse: missing.png: No such file or directory"
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command", [["predict", "examples/digit42.png"], ["explain", "examples/digit42.png"], ["models"]]
)
def test_a_server_that_is_down(command: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = glimpse(*command, "--url", url)
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr == f"glimpse: cannot reach the Glimpse server at {url}: connection refused\n"


def test_the_default_url_says_how_to_start_a_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GLIMPSE_URL", raising=False)
    monkeypatch.setattr(glimpse_client, "DEFAULT_URL", f"http://127.0.0.1:{free_port()}")  # not 8000: in use
    assert cli.main(["models"]) == 3
    error = capsys.readouterr().err
    assert error.startswith(f"glimpse: cannot reach the Glimpse server at {glimpse_client.DEFAULT_URL}: ")
    assert error.endswith("(start it with `make serve`, or give --url or GLIMPSE_URL)\n")


def test_usage_errors_exit_2() -> None:
    done = glimpse("predict")
    assert done.returncode == 2
    assert "usage: glimpse predict" in done.stderr
