"""The offline base image keeps a tag of its own, without Docker: what the default test run can check.

A stand-in tagged ``python:3.11-slim`` would shadow the official image for every later build and
``docker run`` on the machine. The container test proves the whole route with an engine
(``pytest -m container``); these checks hold the tags, the build argument and the docs' commands
together in every run.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_SCRIPT = ROOT / "scripts" / "container_base.sh"


def default_standin_tag() -> str:
    match = re.search(r'^tag="\$\{1:-([^}]+)\}"$', BASE_SCRIPT.read_text(), re.MULTILINE)
    assert match, "scripts/container_base.sh has no default tag"
    return match.group(1)


@pytest.mark.parametrize("tag", ["python:3.11-slim", "docker.io/library/python:3.11-slim"])
def test_base_script_refuses_the_official_name(tag: str) -> None:
    result = subprocess.run([str(BASE_SCRIPT), tag], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "refusing to tag a stand-in as" in result.stderr


def test_the_dockerfile_takes_its_base_from_python_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert re.findall(r"^FROM .*$", dockerfile, re.MULTILINE) == ["FROM ${PYTHON_IMAGE}"]


def test_the_container_test_and_the_docs_build_on_the_standin_tag() -> None:
    tag = default_standin_tag()
    assert not tag.startswith("python:")
    script = (ROOT / "scripts" / "container_test.sh").read_text()
    assert f'STANDIN_BASE="${{GLIMPSE_STANDIN_BASE:-{tag}}}"' in script
    assert '--build-arg "PYTHON_IMAGE=$base_image"' in script
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert f"--build-arg PYTHON_IMAGE={tag}" in operations
