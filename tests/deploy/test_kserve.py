"""deploy/kserve/inferenceservice.yaml, checked with the kserve package's own model classes.

The InferenceService CRD is not among the Kubernetes schemas, so the manifest is read through
``kserve.models`` (``V1beta1InferenceService`` and below; the Kubernetes types they embed from the
``kubernetes`` client's models): every field must be one those classes know, and each class is built
from it, which applies their required-field checks. The predictor's pod fields are validated as a
Pod against the Kubernetes 1.37 schemas in strict mode. Its probes, resources, security context and
shutdown arithmetic must equal the Helm chart's defaults.
"""

from __future__ import annotations

import re
from typing import Any

import kserve.models
import kubernetes.client.models
import kubernetes_validate
import pytest

from app.config import Settings
from app.runtime.launcher import parse_args
from tests.deploy.conftest import KUBERNETES_VERSION, ROOT, Manifest, Render, env_of, load_yaml, only

MANIFEST = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
PRIMITIVES: dict[str, type | tuple[type, ...]] = {
    "str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
}  # fmt: skip


def build(data: Any, type_name: str, path: str) -> Any:
    """``data`` as the model class ``type_name`` of kserve (or of the Kubernetes client) builds it.

    Fails on a field the class does not declare; the constructors check required fields and enums.
    """
    # kserve writes list[T] and dict(str, T); the Kubernetes client List[T] and Dict[str, T].
    if match := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        assert isinstance(data, list), f"{path}: expected a list"
        return [build(item, match.group(1), f"{path}[{i}]") for i, item in enumerate(data)]
    if match := re.fullmatch(r"dict\(([^,]+), (.+)\)|Dict\[([^,]+), (.+)\]", type_name):
        assert isinstance(data, dict), f"{path}: expected a mapping"
        return {
            key: build(value, match.group(2) or match.group(4), f"{path}.{key}")
            for key, value in data.items()
        }
    if type_name in PRIMITIVES:
        assert isinstance(data, PRIMITIVES[type_name]), f"{path}: expected {type_name}, got {data!r}"
        return data
    model = getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models, type_name, None)
    if model is None:  # a string-encoded scalar type such as ResourceQuantity or IntOrString
        assert isinstance(data, str | int), f"{path}: expected a {type_name} scalar"
        return data
    json_to_attribute = {json_key: attribute for attribute, json_key in model.attribute_map.items()}
    unknown = set(data) - set(json_to_attribute)
    assert not unknown, f"{path}: {type_name} has no field(s) {sorted(unknown)}"
    return model(**{
        json_to_attribute[key]: build(value, model.openapi_types[json_to_attribute[key]], f"{path}.{key}")
        for key, value in data.items()
    })  # fmt: skip


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    data = load_yaml(MANIFEST)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def container(manifest: Manifest) -> Manifest:
    containers = manifest["spec"]["predictor"]["containers"]
    assert [c["name"] for c in containers] == ["kserve-container"]  # the name KServe looks for
    return dict(containers[0])


def test_kserve_models_accept_every_field(manifest: Manifest) -> None:
    service = build(manifest, "V1beta1InferenceService", "$")
    assert isinstance(service, kserve.models.V1beta1InferenceService)
    assert service.api_version == "serving.kserve.io/v1beta1"
    assert service.kind == "InferenceService"
    assert isinstance(service.spec.predictor, kserve.models.V1beta1PredictorSpec)


def test_the_model_check_rejects_an_unknown_field(manifest: Manifest) -> None:
    predictor = {**manifest["spec"]["predictor"], "protocolVersion": "v2"}  # a model-format field only
    broken = {**manifest, "spec": {**manifest["spec"], "predictor": predictor}}
    with pytest.raises(AssertionError, match="V1beta1PredictorSpec has no field"):
        build(broken, "V1beta1InferenceService", "$")


def test_predictor_pod_fields_validate_as_a_pod(manifest: Manifest) -> None:
    """The predictor inlines a PodSpec; its pod fields validate against Kubernetes 1.37, strict."""
    predictor = manifest["spec"]["predictor"]
    pod_fields = set(kubernetes.client.models.V1PodSpec.attribute_map.values())
    extension = set(predictor) - pod_fields
    assert extension == {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": manifest["metadata"]["name"]},
        "spec": {key: value for key, value in predictor.items() if key in pod_fields},
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_speaks_the_open_inference_protocol_in_standard_mode(manifest: Manifest, container: Manifest) -> None:
    # KServe reads a custom container's protocol version from PROTOCOL (CustomPredictor.GetProtocol).
    assert env_of(container)["PROTOCOL"] == "v2"
    annotations = manifest["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    args = parse_args(container["args"])
    assert container["command"] == ["python", "-m", "app.serve"]
    assert [p["containerPort"] for p in container["ports"]] == [args.port] == [8080]


def settings_from(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The settings the service reads from ``env`` (API keys aside: a Secret either way)."""
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        monkeypatch.delenv(alias if isinstance(alias, str) else f"GLIMPSE_{field.upper()}", raising=False)
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    return Settings().model_dump()


def test_same_probes_resources_and_hardening_as_the_chart(
    render: Render, manifest: Manifest, container: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = only(render("default"), "Deployment")
    chart_pod = deployment["spec"]["template"]["spec"]
    chart = chart_pod["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        ours = {**container[probe], "httpGet": {**container[probe]["httpGet"], "port": "http"}}
        assert ours == chart[probe], probe
    for key in ("resources", "securityContext", "lifecycle", "volumeMounts"):
        assert container[key] == chart[key], key
    predictor = manifest["spec"]["predictor"]
    for key in (
        "securityContext",
        "terminationGracePeriodSeconds",
        "automountServiceAccountToken",
        "volumes",
    ):
        assert predictor[key] == chart_pod[key], key
    chart_env = env_of(chart)
    for name, value in env_of(container).items():
        if name.startswith(("GLIMPSE_", "WEB_", "HOME", "TMPDIR", "PYTHON")) and name != "GLIMPSE_API_KEYS":
            assert chart_env[name] == value, name
    # Both ways: the service configured by either manifest runs with the same settings.
    assert settings_from(env_of(container), monkeypatch) == settings_from(chart_env, monkeypatch)
    assert (
        parse_args(container["args"]).timeout_graceful_shutdown
        == parse_args(chart["args"]).timeout_graceful_shutdown
    )


def test_api_keys_from_an_optional_secret(container: Manifest) -> None:
    reference = env_of(container)["GLIMPSE_API_KEYS"]["secretKeyRef"]
    assert reference == {"name": "glimpse-api-keys", "key": "api-keys", "optional": True}
