"""glimpse.Client and glimpse.AsyncClient end to end: against the real service on uvicorn (with an API
key), against a scripted stub on uvicorn for the 503 retry policy, and against nothing at all."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glimpse import APIError, AsyncClient, Client, RequestTimedOut, RetryPolicy, ServerUnreachable
from glimpse.client import retry_after_s
from tests.client.conftest import Reply, Stub
from tests.helpers import E2E_API_KEY, REPO_ROOT
from tests.serving import free_port

EXAMPLES = REPO_ROOT / "examples"
DIGIT42, DIGIT903 = EXAMPLES / "digit42.png", EXAMPLES / "digit903.png"  # drawn as "0" and "9"
CARD = json.loads((REPO_ROOT / "models" / "default" / "card.json").read_text())


@pytest.fixture
def glimpse(server: str) -> Client:
    return Client(server, api_key=E2E_API_KEY)


def test_predict_from_a_path_bytes_or_an_image(glimpse: Client) -> None:
    with glimpse:
        for image in (DIGIT42, str(DIGIT42), DIGIT42.read_bytes(), Image.open(DIGIT42)):
            result = glimpse.predict(image, top_k=3)
            assert result.top.label == "0"
            assert [p.index for p in result.predictions] == [int(p.label) for p in result.predictions]
            assert len(result.predictions) == 3
            assert result.predictions == sorted(result.predictions, key=lambda p: -p.score)
            assert (result.model.name, result.model.version) == (CARD["name"], CARD["version"])


def test_predict_many_keeps_the_order(glimpse: Client) -> None:
    with glimpse:
        results = glimpse.predict_many([DIGIT903, DIGIT42, DIGIT903], top_k=1)
    assert [result.top.label for result in results] == ["9", "0", "9"]


def test_attention_map_decodes_the_images(glimpse: Client) -> None:
    with glimpse:
        top = glimpse.attention_map(DIGIT42, include_grid=True)
        other = glimpse.attention_map(DIGIT42, target=6)
        attention = glimpse.attention_map(DIGIT42, kind="attention", overlay=False, colormap="viridis")
    assert (top.target, top.kind, top.width, top.height) == ("0", "evidence", 60, 60)
    assert (top.heatmap.mode, top.heatmap.size) == ("L", (60, 60))
    assert top.overlay is not None
    assert (top.overlay.mode, top.overlay.size) == ("RGB", (60, 60))
    heat = top.heatmap_array()
    assert heat.shape == (60, 60)
    assert heat.dtype == np.float32
    assert heat.max() == 1.0  # 255 is the map's maximum
    assert top.overlay_array().shape == (60, 60, 3)
    assert top.grid is not None
    assert top.grid.shape == (15, 15)  # 60 px at stride 4
    assert top.grid_stride == 4

    assert other.target == "6"
    assert not np.array_equal(other.heatmap_array(), heat)
    assert attention.kind == "attention"
    assert attention.overlay is None
    with pytest.raises(ValueError, match="no overlay"):
        attention.overlay_array()


def test_models_and_health(glimpse: Client) -> None:
    with glimpse:
        info = glimpse.models()
        assert glimpse.health() is True
    assert (info.name, info.version, info.labels) == (CARD["name"], CARD["version"], CARD["labels"])
    assert info.evaluation["cluttered_60x60"]["accuracy"] == CARD["evaluation"]["cluttered_60x60"]["accuracy"]
    assert info.input["min_size"] == 16
    assert info.runtime["device"] == "cpu"


@pytest.mark.parametrize(
    ("image", "status", "code"),
    [(b"not an image", 415, "unsupported_image"), (np.zeros((8, 8), np.uint8), 400, "image_too_small")],
)
def test_errors_carry_the_services_status_code_and_message(
    glimpse: Client, server: str, image: bytes | np.ndarray, status: int, code: str
) -> None:
    upload = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    with glimpse, pytest.raises(APIError) as raised:
        glimpse.predict(upload)
    assert (raised.value.status, raised.value.code) == (status, code)
    assert raised.value.message
    assert str(raised.value) == f"{status} {code}: {raised.value.message}"


def test_a_parameter_error_and_a_wrong_key(server: str) -> None:
    with Client(server, api_key=E2E_API_KEY) as glimpse, pytest.raises(APIError) as raised:
        glimpse.predict(DIGIT42, top_k=0)
    assert (raised.value.status, raised.value.code) == (422, "invalid_parameter")
    assert "top_k" in raised.value.message
    with Client(server, api_key="wrong") as glimpse, pytest.raises(APIError) as raised:
        glimpse.models()
    assert (raised.value.status, raised.value.code, raised.value.message) == (
        401,
        "unauthorized",
        "invalid API key",
    )


def test_url_and_key_default_to_the_environment(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_URL", server + "/")
    monkeypatch.setenv("GLIMPSE_API_KEY", E2E_API_KEY)
    with Client() as glimpse:
        assert glimpse.url == server
        assert glimpse.predict(DIGIT903).top.label == "9"


@pytest.mark.anyio
async def test_the_async_client(server: str) -> None:
    async with AsyncClient(server, api_key=E2E_API_KEY) as glimpse:
        result = await glimpse.predict(DIGIT903)
        explained = await glimpse.attention_map(DIGIT903, target="1")
        info = await glimpse.models()
        assert await glimpse.health() is True
        with pytest.raises(APIError) as raised:
            await glimpse.predict(b"GIF89a")
    assert result.top.label == "9"
    assert (explained.target, explained.heatmap.size) == ("1", (60, 60))
    assert info.name == CARD["name"]
    assert raised.value.status in (400, 415)


def test_a_503_is_retried_after_its_retry_after(stub: Stub) -> None:
    stub.play(Reply(503, {"Retry-After": "1"}), Reply(503, {"Retry-After": "1"}), Reply(200))
    with Client(stub.url) as glimpse:
        assert glimpse.predict(b"image").top.label == "7"
    assert len(stub.arrivals) == 3
    assert all(gap >= 0.95 for gap in stub.gaps_s()), stub.gaps_s()  # never sooner than asked


@pytest.mark.anyio
async def test_the_async_client_retries_too(stub: Stub) -> None:
    stub.play(Reply(503, {"Retry-After": "1"}), Reply(200))
    async with AsyncClient(stub.url) as glimpse:
        assert (await glimpse.predict(b"image")).top.label == "7"
    assert len(stub.arrivals) == 2
    assert stub.gaps_s()[0] >= 0.95


def test_retries_are_bounded(stub: Stub) -> None:
    stub.play(Reply(503, {"Retry-After": "0"}))
    with Client(stub.url, retry=RetryPolicy(max_retries=2)) as glimpse, pytest.raises(APIError) as raised:
        glimpse.predict(b"image")
    assert len(stub.arrivals) == 3  # the first attempt and two retries
    assert (raised.value.status, raised.value.code, raised.value.message) == (
        503,
        "overloaded",
        "the queue is full",
    )
    assert raised.value.retry_after_s == 0


def test_a_retry_after_beyond_the_limit_is_not_waited_for(stub: Stub) -> None:
    stub.play(Reply(503, {"Retry-After": "120"}), Reply(200))
    started = time.monotonic()
    with Client(stub.url, retry=RetryPolicy(max_wait_s=5)) as glimpse, pytest.raises(APIError) as raised:
        glimpse.predict(b"image")
    assert len(stub.arrivals) == 1
    assert raised.value.retry_after_s == 120
    assert time.monotonic() - started < 60  # it gave up instead of sleeping two minutes


def test_without_retry_after_it_backs_off(stub: Stub) -> None:
    stub.play(Reply(503), Reply(503), Reply(200))
    with Client(stub.url, retry=RetryPolicy(backoff_s=0.2)) as glimpse:
        glimpse.predict(b"image")
    assert len(stub.arrivals) == 3
    first, second = stub.gaps_s()
    assert first >= 0.19
    assert second >= 0.39  # doubled


def test_other_errors_are_not_retried(stub: Stub) -> None:
    stub.play(Reply(429, {"Retry-After": "0"}), Reply(200))
    with Client(stub.url) as glimpse, pytest.raises(APIError) as raised:
        glimpse.predict(b"image")
    assert raised.value.status == 429
    assert len(stub.arrivals) == 1


def test_a_slow_answer_times_out(stub: Stub) -> None:
    stub.play(Reply(200, delay_s=3))
    with (
        Client(stub.url, timeout_s=0.3) as glimpse,
        pytest.raises(RequestTimedOut, match="within the timeout"),
    ):
        glimpse.predict(b"image")


def test_retry_after_as_a_date() -> None:
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    wait = retry_after_s(soon)
    assert wait is not None
    assert 25 <= wait <= 31
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # past
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None


def test_a_server_that_is_down() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url) as glimpse, pytest.raises(ServerUnreachable) as raised:
        glimpse.predict(DIGIT42)
    assert str(raised.value) == f"cannot reach the Glimpse server at {url}: connection refused"
    with Client(url) as glimpse, pytest.raises(ServerUnreachable):
        glimpse.health()


def test_the_client_imports_neither_the_service_nor_torch() -> None:
    """glimpse/ stands alone: a user's script does not load the server, the model code or torch."""
    probe = (
        "import sys, glimpse, glimpse.cli; "
        "print([m for m in sys.modules if m.split('.')[0] in ('app', 'models', 'torch')])"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    sources = "\n".join(path.read_text() for path in (REPO_ROOT / "glimpse").glob("*.py"))
    assert "from app" not in sources
    assert "from models" not in sources
    assert Path(sys.executable).parent.joinpath("glimpse").exists()  # the console script is installed
