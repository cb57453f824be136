"""The Helm chart, deploy/helm/glimpse, linted and rendered by upstream helm (v4.1.4, ``make tools``).

Every rendered object is validated against the Kubernetes 1.37 schemas in strict mode (an unknown
field fails), and what users rely on is asserted on the rendered output: the probes, the shutdown
arithmetic, the security context, the GPU request, the autoscaler, the API-key Secret.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from app.config import Settings
from app.runtime.launcher import parse_args
from app.runtime.metrics import Metrics
from tests.deploy.conftest import (
    CHART,
    KUBERNETES_VERSION,
    ROOT,
    VALUES_FILES,
    Manifest,
    Render,
    env_of,
    helm_args,
    load_yaml,
    only,
    run_helm,
)

ALL_VALUES = list(VALUES_FILES)
# Kinds from CRDs, which the core schemas cannot know; each is checked by its own test.
CRD_KINDS = {"ServiceMonitor"}


def container_of(objects: list[Manifest]) -> Manifest:
    containers = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["glimpse"]
    return dict(containers[0])


def pod_spec_of(objects: list[Manifest]) -> Manifest:
    return dict(only(objects, "Deployment")["spec"]["template"]["spec"])


def merged_values(values: str) -> dict[str, Any]:
    """values.yaml with the values file layered over it, maps merged as helm merges them."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and key in out else value
        return out

    merged: dict[str, Any] = load_yaml(CHART / "values.yaml")
    for path in VALUES_FILES[values]:
        merged = merge(merged, load_yaml(path))
    return merged


@pytest.mark.parametrize("values", ALL_VALUES)
def test_helm_lint_passes_strict(helm: Path, values: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *helm_args(values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", ALL_VALUES)
def test_every_object_validates_against_kubernetes_1_37_strict(render: Render, values: str) -> None:
    objects = render(values)
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {error.message} at {list(error.path)}")


def test_the_strict_validation_rejects_an_unknown_field(render: Render) -> None:
    """The validator does fail on a field Kubernetes does not know (so the test above can fail)."""
    deployment = only(render("default"), "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicasCount": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


BASE_KINDS = {"Deployment", "Service", "ServiceAccount", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


@pytest.mark.parametrize(
    ("values", "kinds"),
    [
        ("default", BASE_KINDS),
        ("gpu", BASE_KINDS),
        ("production", BASE_KINDS | {"NetworkPolicy", "ServiceMonitor"}),
    ],
)
def test_rendered_kinds(render: Render, values: str, kinds: set[str]) -> None:
    assert sorted(obj["kind"] for obj in render(values)) == sorted(kinds)


@pytest.mark.parametrize("values", ALL_VALUES)
def test_probes_use_the_health_endpoints_on_the_served_port(render: Render, values: str) -> None:
    container = container_of(render(values))
    assert container["startupProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    args = parse_args(container["args"])  # app.serve's own parser accepts the chart's arguments
    assert (args.host, args.port) == ("0.0.0.0", 8000)
    assert container["command"] == ["python", "-m", "app.serve"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # model load and warm-up


@pytest.mark.parametrize("values", ALL_VALUES)
def test_grace_period_covers_prestop_drain_and_in_flight_work(render: Render, values: str) -> None:
    """terminationGracePeriodSeconds ≥ preStop sleep + drain + graceful shutdown (≥ deadline) + margin."""
    pod = pod_spec_of(render(values))
    container = container_of(render(values))
    env = env_of(container)
    args = parse_args(container["args"])
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_s = float(env["GLIMPSE_SHUTDOWN_DRAIN_S"])
    deadline_s = float(env["GLIMPSE_REQUEST_TIMEOUT_S"])
    graceful_s = args.timeout_graceful_shutdown
    grace_s = pod["terminationGracePeriodSeconds"]

    assert pre_stop_s > 0
    assert drain_s > 0
    assert graceful_s >= deadline_s  # every request in flight ends by its deadline within the window
    assert grace_s >= pre_stop_s + drain_s + graceful_s + 1  # and teardown has a margin before SIGKILL
    shutdown = merged_values(values)["shutdown"]
    assert grace_s == sum(shutdown[k] for k in ("preStopSleepS", "drainS", "gracefulTimeoutS", "marginS"))
    assert deadline_s == merged_values(values)["settings"].get("request_timeout_s", 10)


def test_a_graceful_shutdown_shorter_than_the_deadline_is_refused(helm: Path) -> None:
    result = run_helm(helm, "template", "g", str(CHART), "--set", "settings.request_timeout_s=30")
    assert result.returncode != 0
    assert "shutdown.gracefulTimeoutS (15) must be at least settings.request_timeout_s (30)" in result.stderr


def test_a_longer_deadline_lengthens_the_grace_period(render: Render) -> None:
    objects = render(
        "default", "--set", "settings.request_timeout_s=40", "--set", "shutdown.gracefulTimeoutS=45"
    )
    assert pod_spec_of(objects)["terminationGracePeriodSeconds"] == 5 + 5 + 45 + 5
    assert env_of(container_of(objects))["GLIMPSE_REQUEST_TIMEOUT_S"] == "40"


@pytest.mark.parametrize("values", ALL_VALUES)
def test_hardened_security_context(render: Render, values: str) -> None:
    objects = render(values)
    pod = pod_spec_of(objects)
    container = container_of(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert only(objects, "ServiceAccount")["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # The one writable place: an emptyDir at /tmp, where HOME and TMPDIR point.
    assert container["volumeMounts"][0] == {"name": "tmp", "mountPath": "/tmp"}
    assert pod["volumes"][0]["name"] == "tmp"
    assert "emptyDir" in pod["volumes"][0]
    env = env_of(container)
    assert (env["HOME"], env["TMPDIR"], env["PYTHONDONTWRITEBYTECODE"]) == ("/tmp", "/tmp", "1")
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])


def dockerfile_uid() -> int:
    """The uid of the image's service user, as the Dockerfile creates it."""
    match = re.search(r"useradd [^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert match is not None
    return int(match.group(1))


# Measured resident memory of one worker (values.yaml, settings): after ready on CPU; after ready on a
# GPU (16 GPU workers' proportional set size, docs/operations.md); and the peak per pixel in flight
# (2048² attention maps with overlays, eight at a time: `python -m bench.peak_memory`, 293 and 824 MiB in
# bench/results/20261205-022154-vm-peak-memory.json).
WORKER_BASE_MIB = {"cpu": 300, "cuda": 830}
BYTES_PER_INFLIGHT_PIXEL = 135
QUANTITY_MIB = {"Mi": 1, "Gi": 1024}


@pytest.mark.parametrize("values", ALL_VALUES)
def test_memory_limit_covers_the_images_each_worker_admits(render: Render, values: str) -> None:
    """An OOM kill loses every request in flight: the limit covers each worker's worst case."""
    container = container_of(render(values))
    env = env_of(container)
    settings = Settings(
        max_image_pixels=int(env["GLIMPSE_MAX_IMAGE_PIXELS"]),
        max_inflight_pixels=int(env["GLIMPSE_MAX_INFLIGHT_PIXELS"]),
    )
    limit = container["resources"]["limits"]["memory"]
    limit_mib = int(limit[:-2]) * QUANTITY_MIB[limit[-2:]]
    worker_mib = (
        WORKER_BASE_MIB[env["GLIMPSE_DEVICE"]] + BYTES_PER_INFLIGHT_PIXEL * settings.inflight_pixels() / 2**20
    )
    assert limit_mib >= int(env["WEB_CONCURRENCY"]) * worker_mib


def test_gpu_values_request_a_gpu_and_land_on_gpu_nodes(render: Render) -> None:
    objects = render("gpu")
    container = container_of(objects)
    pod = pod_spec_of(objects)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["image"] == "glimpse:cu128"
    env = env_of(container)
    assert env["GLIMPSE_DEVICE"] == "cuda"
    # Workers per GPU, one core each.
    assert int(env["WEB_CONCURRENCY"]) == 8 == int(container["resources"]["limits"]["cpu"])
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


@pytest.mark.parametrize("values", ["default", "production"])
def test_cpu_values_request_no_gpu(render: Render, values: str) -> None:
    container = container_of(render(values))
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert env_of(container)["GLIMPSE_DEVICE"] == "cpu"


@pytest.mark.parametrize("values", ALL_VALUES)
def test_every_glimpse_variable_is_a_setting(render: Render, values: str) -> None:
    """A misspelt key under ``settings`` would be ignored by the service; the chart's names are real."""
    names = {name for name in env_of(container_of(render(values))) if name.startswith("GLIMPSE_")}
    assert names <= SETTINGS_VARIABLES, names - SETTINGS_VARIABLES
    # Each worker's share of threads is explicit: a CPU limit does not narrow the affinity Glimpse reads.
    assert {"GLIMPSE_TORCH_THREADS", "GLIMPSE_DECODE_THREADS", "GLIMPSE_SHUTDOWN_DRAIN_S"} <= names


def settings_variable(field: str) -> str:
    """The environment variable the service reads a setting from (an alias where the field has one)."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"GLIMPSE_{field.upper()}"


# The variables Settings reads: `workers` is WEB_CONCURRENCY, so GLIMPSE_WORKERS would be ignored.
SETTINGS_VARIABLES = {settings_variable(field) for field in Settings.model_fields}


def test_settings_variables_are_the_ones_the_service_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The names above are what Settings reads, and GLIMPSE_WORKERS is not among them."""
    assert "GLIMPSE_WORKERS" not in SETTINGS_VARIABLES
    assert {"WEB_CONCURRENCY", "GLIMPSE_MAX_BATCH_SIZE"} <= SETTINGS_VARIABLES
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.setenv("GLIMPSE_WORKERS", "4")
    assert Settings().workers == 1


@pytest.mark.parametrize("values", ALL_VALUES)
def test_the_service_reads_every_rendered_setting_as_the_values_say(
    render: Render, values: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings built from the pod's environment validate and equal the values file's settings."""
    env = env_of(container_of(render(values)))
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name in SETTINGS_VARIABLES and isinstance(value, str):
            monkeypatch.setenv(name, value)
    settings = Settings()
    for key, value in merged_values(values)["settings"].items():
        assert getattr(settings, key) == value, key
    assert settings.workers == merged_values(values)["workers"]


def test_large_and_fractional_numbers_render_as_the_service_parses_them(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    """helm prints a values file's 16777216 as 1.6777216e+07, which the service would refuse to start on."""
    objects = render("default", "--values", str(ROOT / "tests" / "deploy" / "values-numbers.yaml"))
    env = env_of(container_of(objects))
    assert env["GLIMPSE_MAX_BODY_BYTES"] == "16777216"
    assert env["GLIMPSE_MAX_BATCH_DELAY_MS"] == "2.5"
    monkeypatch.setenv("GLIMPSE_MAX_BODY_BYTES", env["GLIMPSE_MAX_BODY_BYTES"])
    assert Settings().max_body_bytes == 16777216


def test_values_schema_knows_exactly_the_settings() -> None:
    """values.schema.json lists every setting, and only those, so helm can refuse a misspelt one."""
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["settings"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(Settings.model_fields)


def test_a_misspelt_setting_is_refused(helm: Path) -> None:
    """The service ignores unknown GLIMPSE_* variables; the chart refuses the name instead."""
    result = run_helm(helm, "template", "g", str(CHART), "--set", "settings.max_batch_szie=64")
    assert result.returncode != 0
    assert "additional properties 'max_batch_szie' not allowed" in result.stderr


@pytest.mark.parametrize("key", ["shutdown_drain_s", "api_keys", "workers"])
def test_settings_the_chart_owns_are_refused(helm: Path, key: str) -> None:
    result = run_helm(helm, "template", "g", str(CHART), "--set", f"settings.{key}=1")
    assert result.returncode != 0
    assert f"settings.{key} is set by the chart" in result.stderr


@pytest.mark.parametrize("values", ALL_VALUES)
def test_pods_spread_over_nodes(render: Render, values: str) -> None:
    objects = render(values)
    selector = only(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    constraints = pod_spec_of(objects)["topologySpreadConstraints"]
    by_host = [c for c in constraints if c["topologyKey"] == "kubernetes.io/hostname"]
    assert len(by_host) == 1
    assert by_host[0]["labelSelector"] == {"matchLabels": selector}
    assert by_host[0]["maxSkew"] == 1


def test_autoscaler_scales_the_deployment_on_cpu_by_default(render: Render) -> None:
    objects = render("default")
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    deployment = only(objects, "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"],
    }  # fmt: skip
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    ]
    assert "replicas" not in only(objects, "Deployment")["spec"]  # the autoscaler owns the count


def test_queue_depth_scaling_uses_the_metric_glimpse_exports(render: Render) -> None:
    metrics = only(render("production"), "HorizontalPodAutoscaler")["spec"]["metrics"]
    pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert pods == [
        {"metric": {"name": "glimpse_queue_depth"}, "target": {"type": "AverageValue", "averageValue": "8"}}
    ]
    exported = [family.name for family in Metrics().queue_depth.describe()]
    assert exported == ["glimpse_queue_depth"]


def test_without_autoscaling_the_deployment_sets_replicas(render: Render) -> None:
    objects = render("default", "--set", "autoscaling.enabled=false", "--set", "replicaCount=3")
    assert only(objects, "Deployment")["spec"]["replicas"] == 3
    assert not [obj for obj in objects if obj["kind"] == "HorizontalPodAutoscaler"]


def test_rolling_updates_keep_capacity(render: Render) -> None:
    strategy = only(render("default"), "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


@pytest.mark.parametrize("values", ALL_VALUES)
def test_service_and_disruption_budget_select_the_pods(render: Render, values: str) -> None:
    objects = render(values)
    labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = only(objects, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    budget = only(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1


def test_api_keys_come_from_an_existing_secret(render: Render) -> None:
    env = env_of(container_of(render("production")))
    assert env["GLIMPSE_API_KEYS"] == {"secretKeyRef": {"name": "glimpse-api-keys", "key": "api-keys"}}


def test_api_keys_from_a_secret_the_chart_renders(render: Render) -> None:
    objects = render("default", "--set", "apiKeys.create=true", "--set", "apiKeys.keys={key-one,key-two}")
    secret = only(objects, "Secret")
    assert secret["stringData"] == {"api-keys": "key-one,key-two"}
    env = env_of(container_of(objects))
    assert env["GLIMPSE_API_KEYS"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "api-keys"}
    }
    # The pods roll when the keys change.
    assert "checksum/api-keys" in only(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_no_api_keys_by_default(render: Render) -> None:
    assert "GLIMPSE_API_KEYS" not in env_of(container_of(render("default")))
    assert not [obj for obj in render("default") if obj["kind"] == "Secret"]


def test_network_policy_admits_the_listed_peers_and_denies_egress(render: Render) -> None:
    policy = only(render("production"), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["egress"] == []
    assert policy["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(policy["ingress"][0]["from"]) == 2


def test_service_monitor_scrapes_metrics_on_the_service_port(render: Render) -> None:
    objects = render("production")
    monitor = only(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= only(objects, "Service")["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]


def test_image_digest_wins_over_the_tag(render: Render) -> None:
    digest = "sha256:" + "0" * 64
    objects = render("production", "--set", f"image.digest={digest}")
    assert container_of(objects)["image"] == f"registry.example.com/glimpse@{digest}"
