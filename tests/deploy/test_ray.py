"""Glimpse on Ray Serve: the Serve configs and the KubeRay manifest, a replica as Ray runs it, and the
application on a real two-node Ray cluster, under load, losing a replica.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import shutil
import signal
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
import tritonclient.http as triton
import yaml
from PIL import Image
from ray._private import ray_constants
from ray.serve._private.http_util import parse_disconnect_disabled_header, validate_http_proxy_callback_return
from ray.serve._private.utils import call_function_from_import_path
from ray.serve.schema import RayActorOptionsSchema, ServeDeploySchema
from ray.util.state import list_actors
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.runtime import ray_serve
from app.transports import fast_path
from models.checkpoint import DEFAULT_MODEL_DIR, read_card
from tests.deploy.ray_cluster import HEAD_IP, WORKER_IP, Cluster, two_node_cluster
from tests.helpers import REPO_ROOT, b64, png_bytes, started_client
from tests.serving import free_port

DEPLOY = REPO_ROOT / "deploy" / "ray"
SERVE_CONFIGS = [DEPLOY / "serve-config.yaml", DEPLOY / "serve-config-gpu.yaml"]


def load_yaml(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def config_env(path: Path = SERVE_CONFIGS[0]) -> dict[str, str]:
    """The environment a Serve config gives its replicas (``runtime_env.env_vars``)."""
    env: dict[str, str] = load_yaml(path)["applications"][0]["runtime_env"]["env_vars"]
    return env


# --- The configuration files -------------------------------------------------------------------------


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_is_valid_for_serve_and_names_the_glimpse_deployment(path: Path) -> None:
    config = ServeDeploySchema.model_validate(load_yaml(path))  # what `serve deploy` checks
    (application,) = config.applications
    assert application.import_path == "app.runtime.ray_serve:app"
    assert application.route_prefix == "/"
    (deployment,) = application.deployments
    assert deployment.name == ray_serve.Glimpse.name
    autoscaling = deployment.autoscaling_config
    assert isinstance(autoscaling, dict)
    assert 1 <= autoscaling["min_replicas"] <= autoscaling["initial_replicas"] <= autoscaling["max_replicas"]
    assert 0 < autoscaling["target_ongoing_requests"] <= deployment.max_ongoing_requests
    # A replica must hold more than one full batch, or Serve starves the batcher.
    assert deployment.max_ongoing_requests > Settings(_env_file=None).max_batch_size
    assert isinstance(deployment.ray_actor_options, RayActorOptionsSchema)
    assert deployment.ray_actor_options.num_cpus is not None
    assert deployment.ray_actor_options.num_cpus >= 1


def documented_values() -> dict[str, str]:
    """Field → value from the table of docs/deploy-ray.md's "The Serve config", for the rows whose CPU
    column holds plain values (``| `a.b` / `c` | 1 / 8 |``: ``c`` shares ``a.``)."""
    values = {}
    for line in (REPO_ROOT / "docs" / "deploy-ray.md").read_text().splitlines():
        match = re.fullmatch(r"\| ((?:`[a-z_.]+`(?: / )?)+) \| ([`\w]+(?: / [`\w]+)*) \|.*\|", line)
        if match is None:
            continue
        names, cells = match.group(1).split(" / "), match.group(2).split(" / ")
        prefix = names[0].strip("`").rpartition(".")[0]
        for name, cell in zip(names, cells, strict=True):
            field = name.strip("`")
            values[field if "." in field or not prefix else f"{prefix}.{field}"] = cell.strip("`")
    return values


def test_the_docs_show_the_cpu_configs_values() -> None:
    config = load_yaml(SERVE_CONFIGS[0])
    (deployment,) = config["applications"][0]["deployments"]
    documented = documented_values()
    autoscaling = ("min_replicas", "max_replicas", "initial_replicas", "target_ongoing_requests")
    assert {f"autoscaling_config.{name}" for name in autoscaling} <= set(documented)  # the table was read
    for field, shown in documented.items():
        value: Any = config if field in config else deployment
        for part in field.split("."):
            value = value[part]
        assert str(value) == shown, field


def test_gpu_config_shares_each_gpu_between_replicas() -> None:
    (application,) = ServeDeploySchema.model_validate(load_yaml(SERVE_CONFIGS[1])).applications
    (deployment,) = application.deployments
    assert isinstance(deployment.ray_actor_options, RayActorOptionsSchema)
    assert deployment.ray_actor_options.num_gpus is not None
    assert 0 < deployment.ray_actor_options.num_gpus < 1
    assert isinstance(application.runtime_env, dict)
    assert application.runtime_env["env_vars"]["GLIMPSE_DEVICE"] == "cuda"


def test_rayservice_deploys_the_serve_config_with_the_pinned_ray() -> None:
    manifest = load_yaml(DEPLOY / "rayservice.yaml")
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayService"
    spec = manifest["spec"]
    assert yaml.safe_load(spec["serveConfigV2"]) == load_yaml(SERVE_CONFIGS[0])
    cluster = spec["rayClusterConfig"]
    pins = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert pins["ray"] == [f"ray[serve]=={cluster['rayVersion']}"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # replicas run on the workers
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for template in (head["template"], group["template"]):
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["image"] == "glimpse-ray:cpu"  # deploy/ray/Dockerfile
        assert container["resources"]["requests"] == container["resources"]["limits"]
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # Every node's Ray processes run Serve's HAProxy ingress, not the Python proxy actor.
        assert {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"} in container["env"]
        assert {"name": "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "value": "0"} in container["env"]
        # The replicas inherit the keys from the pod, as the KServe predictor gets them.
        keys = {"secretKeyRef": {"name": "glimpse-api-keys", "key": "api-keys", "optional": True}}
        assert {"name": "GLIMPSE_API_KEYS", "valueFrom": keys} in container["env"]
    # The worker pods hold max_replicas replicas at the replicas' CPU request.
    (deployment,) = yaml.safe_load(spec["serveConfigV2"])["applications"][0]["deployments"]
    worker_cpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    replica_cpus = deployment["ray_actor_options"]["num_cpus"]
    max_replicas = deployment["autoscaling_config"]["max_replicas"]
    assert group["maxReplicas"] * worker_cpus >= max_replicas * replica_cpus


# Measured on a one-node Ray with the CPU config (the config's comment): a replica's resident memory
# after ready and per pixel in flight at its peak, and the resident memory of the Ray processes every
# worker node runs beside its replicas (raylet, dashboard agent, HAProxy and its manager, the proxy actor).
# (`python -m bench.peak_memory --url … --pid … --other-pids …`: 409 MiB after ready, 1,044 MiB at the
# peak of three rounds of 2048² maps, 814 MiB beside; bench/results/20261205-022937-vm-peak-memory.json).
REPLICA_BASE_MIB = 410
BYTES_PER_INFLIGHT_PIXEL = 160
NODE_PROCESSES_MIB = 815
GI = 2**30


def test_worker_pods_hold_their_replicas_at_their_peak() -> None:
    """An OOM kill loses every request a replica holds: a worker pod's memory covers its Ray processes
    and as many replicas as its CPUs take, each at the most its pixel limits let it hold; and Ray packs
    replicas by a memory request that covers that peak, within what Ray leaves beside its object store."""
    spec = load_yaml(DEPLOY / "rayservice.yaml")["spec"]
    (application,) = yaml.safe_load(spec["serveConfigV2"])["applications"]
    (deployment,) = application["deployments"]
    env = application["runtime_env"]["env_vars"]
    settings = Settings(
        _env_file=None,
        max_image_pixels=int(env["GLIMPSE_MAX_IMAGE_PIXELS"]),
        max_inflight_pixels=int(env["GLIMPSE_MAX_INFLIGHT_PIXELS"]),
    )
    peak_bytes = REPLICA_BASE_MIB * 2**20 + BYTES_PER_INFLIGHT_PIXEL * settings.inflight_pixels()
    options = deployment["ray_actor_options"]
    assert options["memory"] >= peak_bytes
    (group,) = spec["rayClusterConfig"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["memory"].endswith("Gi")
    pod_bytes = int(limits["memory"][:-2]) * GI
    replicas = int(limits["cpu"]) // options["num_cpus"]
    assert pod_bytes >= NODE_PROCESSES_MIB * 2**20 + replicas * peak_bytes
    ray_memory = pod_bytes * (1 - ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION)
    assert ray_memory >= replicas * options["memory"]  # Ray's memory resource takes them all
    # The GPU variant bounds its replicas the same way.
    pixel_limits = {name: value for name, value in env.items() if name.startswith("GLIMPSE_MAX_")}
    gpu_env = config_env(SERVE_CONFIGS[1])
    assert {name: gpu_env.get(name) for name in pixel_limits} == pixel_limits
    (gpu_deployment,) = load_yaml(SERVE_CONFIGS[1])["applications"][0]["deployments"]
    assert gpu_deployment["ray_actor_options"]["memory"] >= peak_bytes


# --- Replica settings --------------------------------------------------------------------------------


class FakeRuntimeContext:
    def __init__(self, cpus: float) -> None:
        self.cpus = cpus

    def get_assigned_resources(self) -> dict[str, float]:
        return {"CPU": self.cpus}


@pytest.mark.parametrize(
    ("replica_cpus", "threads", "inline"), [(16, 16, False), (2, 2, False), (1, 1, True), (0.5, 1, True)]
)
def test_a_replica_sizes_its_threads_by_its_cpus_like_a_worker(
    monkeypatch: pytest.MonkeyPatch, replica_cpus: float, threads: int, inline: bool
) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: FakeRuntimeContext(replica_cpus))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(Settings, "cpu_count", property(lambda self: 16))
    settings = ray_serve.replica_settings()
    assert settings.cores_per_worker == threads
    assert (settings.inline_forward_max_s() > 0) is inline
    # The standalone service with as many workers as the node holds such replicas sizes them alike.
    alike = Settings(_env_file=None, WEB_CONCURRENCY=16 // threads)
    assert alike.cores_per_worker == settings.cores_per_worker


def test_an_operators_worker_count_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: FakeRuntimeContext(2))
    assert ray_serve.replica_settings().workers == 3


# --- Serve's HTTP callback ------------------------------------------------------------------------


def test_the_rayservice_installs_the_ingress_callback_and_leaves_metrics_to_the_replicas() -> None:
    spec = load_yaml(DEPLOY / "rayservice.yaml")["spec"]["rayClusterConfig"]
    for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
        (container,) = group["template"]["spec"]["containers"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "app.runtime.ray_serve:ingress_middlewares"
        assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"
        # What Serve does with the variable when it starts an HTTP server (a replica's included).
        middlewares = validate_http_proxy_callback_return(
            call_function_from_import_path(env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"])
        )
        assert [m.cls for m in middlewares] == [ray_serve.DisconnectsLeftToTheApp]  # type: ignore[comparison-overlap]


@pytest.mark.anyio
async def test_the_callback_marks_requests_so_serve_runs_them_without_a_disconnect_watcher() -> None:
    seen: list[Scope] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    middleware = ray_serve.DisconnectsLeftToTheApp(inner)
    headers = [(b"content-type", b"image/png")]
    await middleware({"type": "http", "headers": headers}, None, None)  # type: ignore[arg-type]
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    # Serve's replica reads the header this way to decide whether to watch the client.
    assert parse_disconnect_disabled_header(dict(seen[0]["headers"])) is True
    assert seen[0]["headers"][0] == (b"content-type", b"image/png")  # the client's headers kept
    assert headers == [(b"content-type", b"image/png")]  # the client's list itself untouched
    assert "headers" not in seen[1]


# --- One replica, as Ray's replica wrapper runs it (no cluster) --------------------------------------


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:coroutine .*__del__.* was never awaited:RuntimeWarning")
async def test_replica_runs_the_lifespan_and_answers_through_the_hot_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray's ingress wrapper starts the app's lifespan and calls the app itself, so the raw-ASGI hot
    path (outside FastAPI) answers /predict in a replica, and check_health follows readiness."""
    answered_by_hot_path: list[int] = []
    original = fast_path.send_reply

    async def spy(reply: Any, send: Any) -> None:  # only the fast path sends the core's replies itself
        answered_by_hot_path.append(reply.status)
        await original(reply, send)

    monkeypatch.setattr(fast_path, "send_reply", spy)
    for name in ("GLIMPSE_LOG_LEVEL", "WEB_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    wrapper_class: Any = ray_serve.Glimpse.func_or_class
    replica = wrapper_class.__new__(wrapper_class)
    await wrapper_class.__init__(replica)  # Ray awaits the wrapper's async constructor the same way
    assert replica.app.state.service.ready is False
    await replica._run_asgi_lifespan_startup()  # what Serve runs before the replica takes traffic
    try:
        await replica.check_health()
        transport = httpx.ASGITransport(app=replica)  # the replica's __call__, as the proxy calls it
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as http:
            image = png_bytes(np.full((40, 40), 200, np.uint8))
            response = await http.post("/predict", files={"file": ("a.png", image, "image/png")})
            assert response.status_code == 200
            assert len(response.json()["predictions"]) == 5
            assert (await http.get("/health/ready")).status_code == 200
        assert answered_by_hot_path == [200]
    finally:
        await replica.__del__()  # Serve's graceful stop: the lifespan's shutdown
    assert replica.app.state.service.ready is False
    with pytest.raises(RuntimeError, match="not ready"):
        await replica.check_health()


# --- The application on a real two-node cluster ------------------------------------------------------

REQUESTS = 120
CONCURRENCY = 6
KILL_AFTER = 30  # answers before one replica is killed
RETRIES = 8
# The nodes' GLIMPSE_API_KEYS, as the RayService's pods get it from their Secret; replicas inherit it.
API_KEY = "ray-secret-key"
KEYED = {"X-API-Key": API_KEY}
CARD = read_card(DEFAULT_MODEL_DIR)
Probe = tuple[str, str, dict[str, Any]]  # method, path, httpx keyword arguments


def canvases() -> list[bytes]:
    """Four distinct 60×60 images: noise with a bright blob in a different place each."""
    rng = np.random.default_rng(7)
    images = []
    for index in range(4):
        pixels = (rng.random((60, 60)) ** 6 * 120).astype(np.uint8)
        row, col = 8 + 12 * index, 40 - 8 * index
        pixels[row : row + 12, col : col + 12] = 255
        images.append(png_bytes(pixels))
    return images


def request_plan() -> list[tuple[str, int]]:
    """(path, image index) for every request: both image routes, all four images."""
    paths = ["/predict?top_k=3", "/attention-map?top_k=3"]
    return [(paths[i % 2], (i // 2) % 4) for i in range(REQUESTS)]


def upload(image: bytes, count: int = 1, headers: Any = KEYED) -> dict[str, Any]:
    """A multipart upload of ``count`` copies of ``image``, with the API key unless ``headers`` say else."""
    return {"files": [("file", ("a.png", image, "image/png"))] * count, "headers": headers}


def route_probes(image: bytes) -> dict[str, Probe]:
    """The service's other routes, good requests and bad: probes, metadata, the v2 protocol in JSON and
    in Triton's binary format, API keys, and the 4xx answers to bad input."""
    v2 = f"/v2/models/{CARD.name}"
    as_json = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(image)]}]}
    as_json["outputs"] = [{"name": "label"}, {"name": "probabilities"}]
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
    outputs = [triton.InferRequestedOutput(name) for name in ("label", "probabilities", "heatmap")]
    binary, header_length = triton.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    binary_headers = {"Inference-Header-Content-Length": str(header_length), **KEYED}
    bearer = f"Bearer {API_KEY}"
    return {
        "live": ("GET", "/health/live", {}),
        "ready": ("GET", "/health/ready", {}),
        "models": ("GET", "/models", {"headers": KEYED}),
        "models without a key": ("GET", "/models", {}),
        "predict with a wrong key": ("POST", "/predict", upload(image, headers={"X-API-Key": "wrong"})),
        "predict with a bearer token": ("POST", "/predict", upload(image, headers={"Authorization": bearer})),
        "predict with two keys": ("POST", "/predict", upload(image, headers=[*KEYED.items()] * 2)),
        "predict of text": ("POST", "/predict", upload(b"hi")),
        "predict of a cut png": ("POST", "/predict", upload(image[:100])),
        "predict, top_k=abc": ("POST", "/predict?top_k=abc", upload(image)),
        "predict, 33 images": ("POST", "/predict", upload(image, count=33)),
        "attention of an unknown label": ("POST", "/attention-map?target=dog", upload(image)),
        "GET /predict": ("GET", "/predict", {"headers": KEYED}),
        "unknown path": ("GET", "/nowhere", {}),
        "v2 server": ("GET", "/v2", {}),
        "v2 ready": ("GET", "/v2/health/ready", {}),
        "v2 model metadata": ("GET", v2, {"headers": KEYED}),
        "v2 model version ready": ("GET", f"{v2}/versions/{CARD.version}/ready", {"headers": KEYED}),
        "v2 unknown model": ("GET", "/v2/models/nope/ready", {"headers": KEYED}),
        "v2 infer, JSON": ("POST", f"{v2}/infer", {"json": as_json, "headers": KEYED}),
        "v2 infer without a key": ("POST", f"{v2}/infer", {"json": as_json}),
        "v2 infer, binary": ("POST", f"{v2}/infer", {"content": binary, "headers": binary_headers}),
        "v2 infer, binary of the wrong length": (
            "POST", f"{v2}/infer", {"content": binary[:-9], "headers": binary_headers},
        ),
    }  # fmt: skip


async def standalone_answers(
    images: list[bytes], probes: dict[str, Probe]
) -> tuple[dict[tuple[str, int], dict[str, Any]], dict[str, httpx.Response]]:
    """The in-process service's answers (``create_app`` with the Serve config's settings and the nodes'
    key): to the plan's keys, and to ``probes``."""
    answers, responses = {}, {}
    env = config_env()
    configured: dict[str, Any] = {name.removeprefix("GLIMPSE_").lower(): env[name] for name in env}
    settings = Settings(_env_file=None, api_keys=[API_KEY], **configured)
    client: AsyncIterator[httpx.AsyncClient] = started_client(settings)
    async for http in client:
        for path, index in sorted(set(request_plan())):
            files = {"file": ("a.png", images[index], "image/png")}
            response = await http.post(path, files=files, headers=KEYED)
            assert response.status_code == 200, response.text
            answers[path, index] = response.json()
        for name, (method, path, arguments) in probes.items():
            responses[name] = await http.request(method, path, **arguments)
    return answers, responses


def assert_same_response(got: httpx.Response, expected: httpx.Response) -> None:
    """The same status, headers a client acts on, and body; numbers equal up to float rounding."""
    assert got.status_code == expected.status_code, (got.status_code, got.text[:300])
    for header in ("content-type", "www-authenticate", "allow", "inference-header-content-length"):
        assert got.headers.get(header) == expected.headers.get(header), header
    length = got.headers.get("inference-header-content-length")
    if length is None:
        assert_close(got.json(), expected.json())
        return
    results = [
        triton.InferenceServerClient.parse_response_body(response.content, header_length=int(length))
        for response in (got, expected)
    ]
    assert results[0].get_response() == results[1].get_response()  # names, datatypes, shapes, sizes
    for output in results[1].get_response()["outputs"]:
        values = [result.as_numpy(output["name"]) for result in results]
        if values[1].dtype == np.object_:
            assert values[0].tolist() == values[1].tolist()
        else:  # probabilities up to float rounding, heatmap pixels up to one or two levels (as below)
            tolerance = 1e-4 if values[1].dtype == np.float32 else 2
            assert np.abs(values[0].astype(np.float64) - values[1]).max() <= tolerance, output["name"]


def assert_close(got: Any, expected: Any, where: str = "") -> None:
    """Equal JSON, floats up to rounding: a replica runs fewer threads, which round a little differently."""
    if isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-4), where
    elif isinstance(expected, dict):
        assert isinstance(got, dict), where
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_close(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list), where
        assert len(got) == len(expected), where
        for index, (one, other) in enumerate(zip(got, expected, strict=True)):
            assert_close(one, other, f"{where}[{index}]")
    else:
        assert got == expected, where


def heatmap(text: str) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))), dtype=np.int16)


def assert_same_answer(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal up to float rounding: a batch of several images rounds a little differently than one."""
    assert got.keys() == expected.keys()
    assert [(p["label"], p["index"]) for p in got["predictions"]] == [
        (p["label"], p["index"]) for p in expected["predictions"]
    ]
    assert [p["score"] for p in got["predictions"]] == pytest.approx(
        [p["score"] for p in expected["predictions"]], abs=1e-4
    )
    for key in got.keys() - {"predictions", "heatmap"}:
        assert got[key] == expected[key], key
    if "heatmap" in got:
        assert np.abs(heatmap(got["heatmap"]) - heatmap(expected["heatmap"])).max() <= 2


class Load:
    """Sends the plan with bounded concurrency; retries a request on a connection error or a 5xx."""

    def __init__(self, url: str, images: list[bytes]) -> None:
        self.url, self.images = url, images
        self.answers: dict[int, tuple[str, int, dict[str, Any]]] = {}
        self.retried: list[str] = []
        self.kill_point = asyncio.Event()  # set once KILL_AFTER requests have been answered

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=60) as http:
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(number: int, path: str, index: int) -> None:
                async with gate:
                    self.answers[number] = (path, index, await self.send(http, path, index))
                    if len(self.answers) >= KILL_AFTER:
                        self.kill_point.set()

            await asyncio.gather(*(one(n, path, index) for n, (path, index) in enumerate(request_plan())))

    async def send_all_once(self) -> dict[tuple[str, int], dict[str, Any]]:
        """One answer for every (path, image) of the plan, one request at a time."""
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            return {key: await self.send(http, *key) for key in sorted(set(request_plan()))}

    async def send(self, http: httpx.AsyncClient, path: str, index: int) -> dict[str, Any]:
        for attempt in range(RETRIES):
            files = {"file": ("a.png", self.images[index], "image/png")}
            try:
                response = await http.post(path, files=files, headers=KEYED)
            except httpx.TransportError as exc:
                self.retried.append(type(exc).__name__)
            else:
                if response.status_code == 200:
                    answer: dict[str, Any] = response.json()
                    return answer
                assert response.status_code >= 500, response.text  # never a 4xx for a good request
                self.retried.append(str(response.status_code))
            await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError(f"{path}: no answer after {RETRIES} attempts ({self.retried[-RETRIES:]})")


def serve_config(port: int) -> dict[str, Any]:
    """The shipped CPU Serve config, placed for the two-node test: two replicas, one per node, small
    enough for a 2-core machine, and the HAProxy ingress on the head only at ``port``."""
    config = load_yaml(SERVE_CONFIGS[0])
    config["proxy_location"] = "HeadOnly"
    # The replicas' own HTTP servers bind this host too, and the head's HAProxy reaches the worker node's
    # replica at that node's address: all interfaces (the nodes' loopback addresses).
    config["http_options"] = {"host": "0.0.0.0", "port": port}
    (deployment,) = config["applications"][0]["deployments"]
    del deployment["autoscaling_config"]
    deployment.update(num_replicas=2, max_replicas_per_node=1)  # one per node, whatever Ray would pick
    deployment["ray_actor_options"]["num_cpus"] = 0.5
    return config


class ServeCluster:
    """The cluster as an operator sees it: Serve's REST API and Ray's state API on the head's dashboard."""

    def __init__(self, cluster: Cluster, url: str) -> None:
        self.cluster, self.url = cluster, url
        self.dashboard = httpx.Client(base_url=cluster.dashboard_url, timeout=60)

    def deploy(self, config: dict[str, Any]) -> None:
        response = self.dashboard.put("/api/serve/applications/", json=config)  # what `serve deploy` sends
        assert response.status_code == 200, response.text

    def replicas(self) -> list[dict[str, Any]]:
        """The deployment's running replicas (node_ip, actor_id, pid, …), from Serve's own status."""
        details = self.dashboard.get("/api/serve/applications/").json()
        application = details["applications"].get("glimpse")
        if application is None or application["status"] != "RUNNING":
            return []
        replicas: list[dict[str, Any]] = application["deployments"]["glimpse"]["replicas"]
        return replicas if all(r["state"] == "RUNNING" for r in replicas) else []

    def wait_running(self, replica_count: int, timeout_s: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(running := self.replicas()) == replica_count:
                return running
            time.sleep(1)
        status = self.dashboard.get("/api/serve/applications/").text
        raise AssertionError(f"not {replica_count} running replicas after {timeout_s} s: {status}")

    def alive_actor_classes(self) -> set[str]:
        alive: list[tuple[str, str, str | bool | int | float]] = [("state", "=", "ALIVE")]
        actors = list_actors(address=self.cluster.dashboard_url, filters=alive, raise_on_missing_output=False)
        return {actor.class_name for actor in actors}


@pytest.fixture
def serve_on_two_nodes() -> Iterator[ServeCluster]:
    """Glimpse deployed through Serve's REST API on a two-node cluster, one replica per node."""
    port = free_port()
    # Not pytest's tmp_path: Ray's socket paths under it would pass the 107-byte limit of AF_UNIX.
    temp_dir = Path(tempfile.mkdtemp(prefix="glimpse-ray-"))
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, temp_dir, ignore_errors=True)
        cluster = cleanup.enter_context(two_node_cluster(temp_dir, pod_env={"GLIMPSE_API_KEYS": API_KEY}))
        serving = ServeCluster(cluster, f"http://127.0.0.1:{port}")
        cleanup.callback(serving.dashboard.close)
        try:
            serving.deploy(serve_config(port))
            serving.wait_running(2, timeout_s=300)
            yield serving
        except BaseException:
            print(cluster.logs())  # pytest shows it with the failure
            raise


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_nodes_answer_every_request_like_standalone_through_a_replica_kill(
    serve_on_two_nodes: ServeCluster,
) -> None:
    try:
        answer_through_a_replica_kill(serve_on_two_nodes)
    except BaseException:
        print(serve_on_two_nodes.cluster.logs())  # pytest shows it with the failure
        raise


def answer_through_a_replica_kill(serving: ServeCluster) -> None:
    url = serving.url
    placed = serving.replicas()
    assert sorted(r["node_ip"] for r in placed) == [WORKER_IP, HEAD_IP]  # one replica on each node
    # Requests come in through Serve's HAProxy ingress, as the RayService runs it (a proxy actor stays
    # beside it as HAProxy's fallback while no replica is routable).
    assert "HAProxyManager" in serving.alive_actor_classes()
    images = canvases()
    probes = route_probes(images[0])
    expected, expected_responses = asyncio.run(standalone_answers(images, probes))
    # Every route answers as the standalone service does, errors and API keys included.
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, (method, path, arguments) in probes.items():
            try:
                assert_same_response(http.request(method, path, **arguments), expected_responses[name])
            except AssertionError as failure:
                raise AssertionError(f"{name}: {failure}") from failure
    load = Load(url, images)
    victim = next(r for r in placed if r["node_ip"] == WORKER_IP)
    assert victim["pid"] > 1  # a process of its own, never this one's group
    assert "ServeReplica" in Path(f"/proc/{victim['pid']}/cmdline").read_text(errors="replace")

    async def load_and_kill() -> int:
        task = asyncio.create_task(load.run())
        await asyncio.wait_for(load.kill_point.wait(), timeout=300)
        answered_before_kill = len(load.answers)
        os.kill(victim["pid"], signal.SIGKILL)  # the replica's process dies, as in a crash or an OOM kill
        await task
        return answered_before_kill

    answered_before_kill = asyncio.run(load_and_kill())
    print(
        f"sent {REQUESTS}, answered {len(load.answers)}, {answered_before_kill} before the kill; "
        f"retries: {load.retried}"
    )
    assert answered_before_kill < REQUESTS - 30  # the kill came mid-load
    assert sorted(load.answers) == list(range(REQUESTS))  # sent = answered
    for path, index, answer in load.answers.values():
        assert_same_answer(answer, expected[path, index])

    # Serve replaces the killed replica on the node it left, and the new one serves.
    deadline = time.monotonic() + 300
    replaced = serving.wait_running(2, timeout_s=300)
    while victim["actor_id"] in {r["actor_id"] for r in replaced} and time.monotonic() < deadline:
        time.sleep(1)  # Serve notices the dead actor at its next health check
        replaced = serving.wait_running(2, timeout_s=300)
    assert victim["actor_id"] not in {r["actor_id"] for r in replaced}
    assert sorted(r["node_ip"] for r in replaced) == [WORKER_IP, HEAD_IP]
    after = asyncio.run(Load(url, images).send_all_once())
    for (path, index), answer in after.items():
        assert_same_answer(answer, expected[path, index])
