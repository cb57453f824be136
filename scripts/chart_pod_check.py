"""Run the image as the Helm chart's pod runs it, and check its drain: ``python -m scripts.chart_pod_check``.

Renders deploy/helm/glimpse with helm, takes the Deployment's container (command, arguments, plain
environment, resource limits) and pod security context, and starts the image with Docker under the
same constraints: the pod's user, a read-only root filesystem with a tmpfs at the emptyDir's /tmp, the
dropped capabilities, no privilege escalation. Then it checks what the chart relies on:

* ``/health/ready`` answers 200 (the startup and readiness probes) and ``/health/live`` 200;
* a round trip through ``/predict`` and ``/attention-map`` (scripts/container_smoke.py);
* after SIGTERM (what the kubelet sends once the preStop sleep is over), for the drain,
  ``GLIMPSE_SHUTDOWN_DRAIN_S``, ``/health/ready`` answers 503 while ``/predict`` is still answered;
* the container then exits 0 within terminationGracePeriodSeconds less the preStop sleep.

Used by scripts/container_test.sh; needs a Docker engine, the image, and helm (``make tools``).
"""

# Every process started here is docker or helm with arguments this script builds; URLs are http to 127.0.0.1.
# ruff: noqa: S603, S607, S310

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from scripts.container_smoke import CheckError, check_prediction, expect, make_png, post_image, round_trip

ROOT = Path(__file__).resolve().parents[1]


def rendered_pod(helm: str) -> dict[str, Any]:
    """The chart's pod template with its default values."""
    chart = ROOT / "deploy" / "helm" / "glimpse"
    out = subprocess.run(
        [helm, "template", "glimpse", str(chart)], capture_output=True, text=True, check=True
    ).stdout
    deployment = next(doc for doc in yaml.safe_load_all(out) if doc and doc["kind"] == "Deployment")
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def docker_size(quantity: str) -> str:
    """A Kubernetes binary quantity (512Mi, 1Gi) as Docker writes it (512m, 1g)."""
    match = re.fullmatch(r"(\d+)([KMG])i", quantity)
    if match is None:
        raise ValueError(f"unsupported quantity {quantity!r}")
    return f"{match.group(1)}{match.group(2).lower()}"


def docker_run_args(pod: dict[str, Any], image: str, name: str, port: int) -> list[str]:
    """``docker run`` arguments that apply the pod's constraints to the image."""
    container = pod["containers"][0]
    security, pod_security = container["securityContext"], pod["securityContext"]
    published = f"127.0.0.1:{port}:{container['ports'][0]['containerPort']}"
    args = ["docker", "run", "--detach", "--name", name, "--publish", published]
    args += ["--user", f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}"]
    if security["readOnlyRootFilesystem"]:
        args.append("--read-only")
    args += [arg for cap in security["capabilities"]["drop"] for arg in ("--cap-drop", cap)]
    if not security["allowPrivilegeEscalation"]:
        args += ["--security-opt", "no-new-privileges"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        empty_dir = volumes[mount["name"]]["emptyDir"]
        args += ["--tmpfs", f"{mount['mountPath']}:size={docker_size(empty_dir['sizeLimit'])}"]
    limits = container["resources"]["limits"]
    args += ["--cpus", str(limits["cpu"]), "--memory", docker_size(limits["memory"])]
    for item in container["env"]:
        if "value" in item:  # references (Secrets) are left out: the check runs without keys
            args += ["--env", f"{item['name']}={item['value']}"]
    return [*args, image, *container["command"], *container["args"]]


def status_of(url: str, timeout_s: float = 5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def wait_ready(base_url: str, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if status_of(f"{base_url}/health/ready") == 200:
                return time.monotonic() - started
        except OSError:
            pass  # not listening yet
        time.sleep(0.5)
    raise CheckError(f"/health/ready did not answer 200 within {timeout_s:.0f} s")


def check_drain(base_url: str, name: str, drain_s: float) -> float:
    """SIGTERM, then for the drain: readiness 503, predictions still answered; returns when it was sent."""
    png = make_png(60, 60)
    subprocess.run(["docker", "kill", "--signal", "TERM", name], check=True, capture_output=True)
    signalled = time.monotonic()
    checks = 0
    # Stop checking a second before the drain ends: after it, the server stops accepting connections.
    while time.monotonic() - signalled < drain_s - 1:
        ready = status_of(f"{base_url}/health/ready")
        expect(ready == 503, f"/health/ready answered {ready} during the drain")
        status, body = post_image(f"{base_url}/predict", png, timeout_s=10)
        expect(status == 200, f"/predict answered {status} during the drain")
        check_prediction(body)
        checks += 1
        time.sleep(0.2)
    expect(checks >= 3, f"only {checks} checks fitted in the drain")
    print(
        f"drain: /health/ready 503 and /predict 200 in {checks} checks over {drain_s - 1:.0f} s after SIGTERM"
    )
    return signalled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--helm", default=str(ROOT / ".tools" / "helm"))
    parser.add_argument("--port", type=int, required=True, help="free host port on 127.0.0.1")
    args = parser.parse_args()

    pod = rendered_pod(args.helm)
    container = pod["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    drain_s = float(env["GLIMPSE_SHUTDOWN_DRAIN_S"])
    grace_s = float(pod["terminationGracePeriodSeconds"])
    pre_stop_s = float(container["lifecycle"]["preStop"]["sleep"]["seconds"])
    name = f"glimpse-chart-pod-{args.port}"
    base_url = f"http://127.0.0.1:{args.port}"
    run = docker_run_args(pod, args.image, name, args.port)
    print("docker run as the chart's pod:", " ".join(run[2:]))
    subprocess.run(run, check=True, capture_output=True)
    try:
        ready_s = wait_ready(base_url, timeout_s=180)
        expect(status_of(f"{base_url}/health/live") == 200, "/health/live")
        print(f"ready in {ready_s:.1f} s under the chart's security context (read-only root, uid "
              f"{pod['securityContext']['runAsUser']}, no capabilities)")  # fmt: skip
        round_trip(base_url, None)
        signalled = check_drain(base_url, name, drain_s)
        budget_s = grace_s - pre_stop_s
        waited = subprocess.run(
            ["docker", "wait", name],
            capture_output=True,
            text=True,
            timeout=budget_s + 30,
            check=True,
        )
        stopped_s = time.monotonic() - signalled
        exit_code = int(waited.stdout.strip())
        expect(exit_code == 0, f"exit code {exit_code} after SIGTERM")
        expect(stopped_s <= budget_s, f"stopped after {stopped_s:.1f} s, past the {budget_s:.0f} s left")
        print(f"exited 0 {stopped_s:.1f} s after SIGTERM, within the {budget_s:.0f} s the grace period "
              f"leaves after the preStop sleep")  # fmt: skip
    except (CheckError, KeyError, OSError, subprocess.SubprocessError) as error:
        logs = subprocess.run(["docker", "logs", "--tail", "30", name], capture_output=True, text=True)
        print(f"FAIL: {type(error).__name__}: {error}\n{logs.stdout}{logs.stderr}", file=sys.stderr)
        return 1
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
