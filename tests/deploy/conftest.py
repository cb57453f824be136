"""The deploy tests' tools: upstream helm from .tools/ (``make tools``), the chart rendered by it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "glimpse"
# The values files the chart ships, each layered over values.yaml as a user would.
VALUES_FILES: dict[str, list[Path]] = {
    "default": [],
    "gpu": [CHART / "values-gpu.yaml"],
    "production": [CHART / "values-production.yaml"],
}
KUBERNETES_VERSION = "1.37"

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


@pytest.fixture(scope="session")
def helm() -> Path:
    """The real helm binary; a missing one fails the run (``make test`` installs it first)."""
    path = Path(os.environ.get("GLIMPSE_HELM", ROOT / ".tools" / "helm"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"no helm at {path}: run `make tools` (scripts/k8s_tools.sh) first")
    return path


def helm_args(values: str, *extra: str) -> list[str]:
    files = [arg for path in VALUES_FILES[values] for arg in ("--values", str(path))]
    return [*files, *extra]


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """``render(values, *--set ...)``: the chart's objects from ``helm template``, cached."""
    cache: dict[tuple[str, ...], list[Manifest]] = {}

    def rendered(values: str, *extra: str) -> list[Manifest]:
        key = (values, *extra)
        if key not in cache:
            result = run_helm(
                helm, "template", "glimpse", str(CHART), "--namespace", "serving",
                "--kube-version", KUBERNETES_VERSION, *helm_args(values, *extra),
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            cache[key] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        return cache[key]

    return rendered


def only(objects: list[Manifest], kind: str) -> Manifest:
    """The single object of ``kind``."""
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def env_of(container: Manifest) -> dict[str, Any]:
    """The container's environment: plain values as strings, references as their ``valueFrom``."""
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
