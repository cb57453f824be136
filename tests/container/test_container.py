"""The Docker image and docker-compose.yml, built and run for real by scripts/container_test.sh.

Slow (a Docker engine, an image build, a container) and root-only where no engine runs, so it runs only
when selected: ``pytest -m container``. The default ``pytest`` run skips it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "glimpse:container-test"

pytestmark = pytest.mark.container


@pytest.fixture(scope="module")
def container_run(request: pytest.FixtureRequest) -> subprocess.CompletedProcess[str]:
    """One full run of the script: build, compose up, round trip, graceful stop, tear down."""
    # The gate lives in this module-scoped fixture: pytest sets it up before any function-scoped one.
    if "container" not in request.config.getoption("markexpr"):
        pytest.skip("builds and runs the Docker image; select it with -m container")
    if shutil.which("docker") is None:
        pytest.fail("the container test was selected but there is no docker client")
    return subprocess.run(
        [str(ROOT / "scripts" / "container_test.sh")],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, "GLIMPSE_IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


@pytest.mark.timeout(1900)
def test_compose_round_trip_and_graceful_stop(container_run: subprocess.CompletedProcess[str]) -> None:
    output = container_run.stdout + container_run.stderr
    assert container_run.returncode == 0, output[-4000:]
    assert "POST /predict -> 200" in output
    assert "POST /attention-map -> 200" in output
    assert "graceful stop:" in output
    assert "container stopped cleanly (exit code 0)" in output


@pytest.mark.timeout(1900)
def test_image_runs_as_the_helm_chart_pod_and_drains(container_run: subprocess.CompletedProcess[str]) -> None:
    """The chart's command, environment and security context work, and its drain holds (chart_pod_check)."""
    output = container_run.stdout + container_run.stderr
    assert container_run.returncode == 0, output[-4000:]
    assert "--read-only --cap-drop ALL --security-opt no-new-privileges --tmpfs /tmp" in output
    assert "under the chart's security context" in output
    assert re.search(r"drain: /health/ready 503 and /predict 200 in \d+ checks", output)
    assert re.search(r"exited 0 [\d.]+ s after SIGTERM, within the \d+ s", output)


@pytest.mark.timeout(1900)
def test_local_base_never_shadows_the_official_python_image(
    container_run: subprocess.CompletedProcess[str],
) -> None:
    """Offline, the stand-in base keeps a tag of its own and reaches the build as PYTHON_IMAGE."""
    assert container_run.returncode == 0, container_run.stderr[-4000:]
    built_on = next(line for line in container_run.stderr.splitlines() if line.startswith("==> built on "))
    base = built_on.removeprefix("==> built on ").split(";")[0]
    pulled_or_present = "pulled python:3.11-slim" in container_run.stderr or (
        "base image python:3.11-slim is present" in container_run.stderr
    )
    assert base == "python:3.11-slim" if pulled_or_present else base != "python:3.11-slim"
    assert "no local stand-in is tagged python:3.11-slim" in built_on


@pytest.mark.timeout(1900)
def test_image_runs_unprivileged_with_healthcheck(container_run: subprocess.CompletedProcess[str]) -> None:
    assert container_run.returncode == 0, container_run.stderr[-4000:]
    line = next(line for line in container_run.stderr.splitlines() if line.startswith("==> image config: "))
    config = json.loads(line.removeprefix("==> image config: "))
    assert config["User"] == "glimpse"
    assert "PYTHONUNBUFFERED=1" in config["Env"]
    assert "GLIMPSE_DEVICE=auto" in config["Env"]
    assert any("/health/ready" in part for part in config["Healthcheck"]["Test"])
    assert config["Cmd"][:3] == ["python", "-m", "app.serve"]
