"""Access: API keys on inference and model endpoints (probes stay open), CORS closed unless configured,
no unpickling anywhere, no file path a client controls, internals never in an answer."""

from __future__ import annotations

import ast
import socket
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from app.config import Settings
from tests.helpers import E2E_API_KEY, REPO_ROOT, b64, started_client

pytestmark = pytest.mark.anyio

KEYS = ["k1-secret", "k2-secret"]
PROTECTED = [("POST", "/predict"), ("POST", "/attention-map"), ("GET", "/models")]
OPEN = ["/health/live", "/health/ready", "/metrics", "/openapi.json", "/docs"]


@pytest.fixture
async def keyed() -> AsyncIterator[httpx.AsyncClient]:
    async for http in started_client(Settings(_env_file=None, api_keys=KEYS)):
        yield http


async def _call(
    http: httpx.AsyncClient, method: str, path: str, image: bytes, headers: dict[str, str], multipart: bool
) -> httpx.Response:
    if method == "GET":
        return await http.get(path, headers=headers)
    if multipart:  # the raw-ASGI hot path
        return await http.post(path, files={"file": ("a.png", image, "image/png")}, headers=headers)
    return await http.post(path, json={"image": b64(image)}, headers=headers)


@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "json"])
async def test_keys_guard_inference_and_models_on_both_paths(
    keyed: httpx.AsyncClient, canvas_png: Callable[[int], bytes], multipart: bool
) -> None:
    image = canvas_png(0)
    for method, path in PROTECTED:
        for headers in ({}, {"X-API-Key": "k3"}, {"X-API-Key": ""}, {"Authorization": "Bearer k1"},
                        {"Authorization": "Basic k1-secret"}, {"X-API-Key": KEYS[0] + " "}):  # fmt: skip
            response = await _call(keyed, method, path, image, headers, multipart)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "ApiKey"
        for headers in (
            {"X-API-Key": KEYS[0]},
            {"X-API-Key": KEYS[1]},
            {"Authorization": f"Bearer {KEYS[1]}"},
        ):
            response = await _call(keyed, method, path, image, headers, multipart)
            assert response.status_code == 200, (path, headers, response.text)


async def test_probes_metrics_and_docs_stay_open(keyed: httpx.AsyncClient) -> None:
    for path in OPEN:
        assert (await keyed.get(path)).status_code == 200, path


def test_keys_are_compared_in_constant_time() -> None:
    """The one place that checks keys uses hmac.compare_digest over every key, never ``==`` or ``in``."""
    source = (REPO_ROOT / "app/pipeline/auth.py").read_text()
    assert "hmac.compare_digest(presented[0], key)" in source
    assert " in keys" not in source.replace("for key in keys:", "")
    for module in REPO_ROOT.glob("app/**/*.py"):  # and no other module compares keys
        if module.name != "auth.py":
            assert "compare_digest" not in module.read_text(), module


async def test_cors_is_closed_unless_configured(
    settings: Settings, canvas_png: Callable[[int], bytes]
) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    async for http in started_client(settings):
        answers = [
            await http.options("/predict", headers=preflight),
            await http.get("/health/live", headers={"Origin": "https://evil.example"}),
        ]
        assert all("access-control-allow-origin" not in r.headers for r in answers)
    allowed = Settings(_env_file=None, cors_origins=["https://app.example"])
    upload = {"file": ("d.png", canvas_png(0), "image/png")}
    async for http in started_client(allowed):
        good = await http.options("/predict", headers={**preflight, "Origin": "https://app.example"})
        bad = await http.options("/predict", headers=preflight)
        simple = await http.get("/health/live", headers={"Origin": "https://app.example"})
        # A multipart upload the hot path would take: from another origin it must carry the CORS header.
        posted = await http.post("/predict", files=upload, headers={"Origin": "https://app.example"})
    assert good.status_code == 200
    assert good.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in bad.headers
    assert simple.headers["access-control-allow-origin"] == "https://app.example"
    assert posted.status_code == 200
    assert posted.headers["access-control-allow-origin"] == "https://app.example"


# Anything that can execute code while loading data, and loaders whose safety depends on a flag.
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
FORBIDDEN_CALLS = {"torch.load", "torch.jit.load", "np.load", "numpy.load", "pd.read_pickle", "eval", "exec"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def test_no_pickle_or_code_loading_in_app_or_models() -> None:
    offences = []
    files = sorted((REPO_ROOT / "app").rglob("*.py")) + sorted((REPO_ROOT / "models").rglob("*.py"))
    assert len(files) > 10
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO_ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                offences += [
                    f"{where} import {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] in FORBIDDEN_MODULES
                ]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
                offences.append(f"{where} from {node.module} import")
            elif isinstance(node, ast.Call) and _dotted(node.func) in FORBIDDEN_CALLS:
                offences.append(f"{where} {_dotted(node.func)}()")
    assert not offences, offences


def test_weights_are_read_with_safetensors_only() -> None:
    source = (REPO_ROOT / "models" / "checkpoint.py").read_text()
    assert "from safetensors.torch import load_file, save_file" in source
    assert "load_file(str(weights))" in source


def test_no_client_controlled_paths(server: str) -> None:
    """The only files served are the docs assets, and traversal out of them is refused."""
    host, port = server.removeprefix("http://").split(":")
    for target in ("/docs-assets/../../../../etc/passwd", "/docs-assets/%2e%2e/%2e%2e/etc/passwd",
                   "/docs-assets/..%2f..%2fapp%2fmain.py", "/../app/main.py"):  # fmt: skip
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # raw: no client normalising
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        status = reply.split(b" ", 2)[1]
        assert status in (b"404", b"400"), (target, reply[:200])
        assert b"root:" not in reply
        assert b"create_app" not in reply


def test_answers_never_carry_internals(server: str) -> None:
    """Unknown routes, bad methods and bad bodies: the error shape, no trace, no file path, no versions."""
    responses = [
        httpx.get(f"{server}/nowhere"),
        httpx.delete(f"{server}/predict"),
        httpx.post(
            f"{server}/predict",
            content=b"[" * 100_000,
            headers={"content-type": "application/json", "X-API-Key": E2E_API_KEY},
        ),
    ]
    for response in responses:
        assert set(response.json()) == {"error"}
        for leak in ("Traceback", 'File "', "/work/", "site-packages", "python"):
            assert leak not in response.text, (leak, response.text)


def test_server_header_does_not_advertise_python_versions(server: str) -> None:
    assert httpx.get(f"{server}/health/live").headers.get("server", "") in ("", "uvicorn")
