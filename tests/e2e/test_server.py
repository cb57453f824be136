"""End to end: a real uvicorn process on a loopback port, spoken to over TCP.

The server runs with an API key and small limits (see ``conftest.server``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

from app.schemas import (
    AttentionMapResponsePublic,
    BatchPredictResponsePublic,
    ModelInfoPublic,
    PredictResponsePublic,
)
from models.checkpoint import DEFAULT_MODEL_DIR, read_card
from models.data import CanvasSet
from tests.helpers import E2E_API_KEY, b64, decode_png, png_bytes

CARD = read_card(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"X-API-Key": E2E_API_KEY}, timeout=30) as client:
        yield client


def test_health_and_readiness(server: str) -> None:
    assert httpx.get(f"{server}/health/live").json() == {"status": "alive"}
    assert httpx.get(f"{server}/health/ready").json() == {"status": "ready"}


def test_predict_over_tcp(
    http: httpx.Client, canvases: CanvasSet, canvas_png: Callable[[int], bytes]
) -> None:
    response = http.post(
        "/predict", params={"top_k": 3}, files={"file": ("d.png", canvas_png(42), "image/png")}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = PredictResponsePublic.model_validate(response.json())
    assert (body.model.name, body.model.version) == (CARD.name, CARD.version)
    assert [p.index for p in body.predictions] == [CARD.labels.index(p.label) for p in body.predictions]
    assert len(body.predictions) == 3
    assert body.predictions[0].label == str(int(canvases.labels[42]))
    assert body.predictions[0].score >= body.predictions[1].score >= body.predictions[2].score


def test_several_images_in_one_request(
    http: httpx.Client, canvases: CanvasSet, canvas_png: Callable[[int], bytes]
) -> None:
    indices = [3, 303, 603, 903]
    files = [("file", (f"{i}.png", canvas_png(i), "image/png")) for i in indices]
    body = BatchPredictResponsePublic.model_validate(http.post("/predict", files=files).json())
    assert [r.predictions[0].label for r in body.results] == [str(int(canvases.labels[i])) for i in indices]


def test_attention_map_over_tcp_is_aligned(
    http: httpx.Client, canvases: CanvasSet, canvas_png: Callable[[int], bytes]
) -> None:
    hits = 0
    sample = range(1, 1000, 50)  # 20 canvases
    for index in sample:
        response = http.post(
            "/attention-map", params={"overlay": "true"}, json={"image": b64(canvas_png(index))}
        )
        body = AttentionMapResponsePublic.model_validate(response.json())
        assert body.overlay is not None
        assert decode_png(body.overlay).size == decode_png(body.heatmap).size == (60, 60)
        heat = np.asarray(decode_png(body.heatmap))
        y, x = np.unravel_index(int(heat.argmax()), heat.shape)
        x0, y0, x1, y1 = canvases.boxes[index].tolist()
        hits += x0 - 2 <= x <= x1 + 1 and y0 - 2 <= y <= y1 + 1
    assert hits >= 19


def test_every_error_class_over_tcp(
    http: httpx.Client, server: str, canvas_png: Callable[[int], bytes]
) -> None:
    image = {"image": b64(canvas_png(0))}
    cases = [
        (httpx.post(f"{server}/predict", json=image), 401, "unauthorized"),
        (http.post("/predict", json={"image": b64(b"not an image at all")}), 415, "unsupported_image"),
        (
            http.post("/predict", content=b"x", headers={"content-type": "text/csv"}),
            415,
            "unsupported_media_type",
        ),
        (http.post("/predict", json={"image": "%%%"}), 400, "invalid_image"),
        (http.post("/predict", json={"images": [image["image"]] * 5}), 413, "too_many_images"),
        (
            http.post("/predict", content=b"{" * 300_001, headers={"content-type": "application/json"}),
            413,
            "payload_too_large",
        ),
        (http.post("/predict", params={"top_k": 99}, json=image), 422, "invalid_parameter"),
        (http.post("/attention-map", params={"target": "dog"}, json=image), 422, "invalid_parameter"),
        (http.get("/nowhere"), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text


def test_large_declared_image_is_refused(http: httpx.Client) -> None:
    huge = png_bytes(np.zeros((4200, 4200), dtype=np.uint8))  # 17.6 M pixels > the 16.8 M default limit
    response = http.post("/predict", files={"file": ("big.png", huge, "image/png")})
    assert (response.status_code, response.json()["error"]["code"]) == (413, "image_too_large")


def test_models_metrics_and_docs(http: httpx.Client, server: str) -> None:
    info = ModelInfoPublic.model_validate(http.get("/models").json())
    assert info.labels == CARD.labels
    metrics = httpx.get(f"{server}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'route="/predict",status="200"' in metrics.text
    assert "glimpse_batch_size_count" in metrics.text
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/predict", "/attention-map", "/models", "/health/live", "/health/ready", "/metrics"} <= set(
        spec["paths"]
    )
    assert "swagger-ui" in httpx.get(f"{server}/docs").text


@pytest.mark.parametrize(
    "path", ["/health/live", "/health/ready", "/v2/health/ready", "/models", "/metrics", "/openapi.json"]
)
def test_head_is_get_without_the_body(http: httpx.Client, path: str) -> None:
    """RFC 9110 §9.1: every GET resource answers HEAD, as uptime monitors and `curl -I` send it."""
    get, head = http.get(path), http.head(path)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # its counters moved with the GET
        assert head.headers["content-length"] == get.headers["content-length"]


def test_head_where_only_post_is_served_is_405(http: httpx.Client) -> None:
    response = http.head("/predict")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
@pytest.mark.parametrize("path", ["/predict", "/attention-map", f"/v2/models/{CARD.name}/infer"])
def test_a_compressed_body_is_refused_by_name(
    http: httpx.Client, canvas_png: Callable[[int], bytes], path: str, encoding: str
) -> None:
    """The body is read as sent: a gzip body (tritonclient's request_compression_algorithm) was parsed as
    garbage ("not valid JSON: str is not valid UTF-8"), and a "br" label on a plain body ignored."""
    image = b64(canvas_png(1))
    document = (
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}]}
        if path.startswith("/v2")
        else {"image": image}
    )
    body = json.dumps(document).encode()
    headers = {"content-type": "application/json", "content-encoding": encoding}
    response = http.post(path, content=gzip.compress(body) if encoding == "gzip" else body, headers=headers)
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    message = error if path.startswith("/v2") else error["message"]
    assert f"Content-Encoding '{encoding}' is not supported" in message
    if not path.startswith("/v2"):
        assert error["code"] == "unsupported_media_type"


def test_identity_content_encoding_is_the_plain_body(
    http: httpx.Client, canvas_png: Callable[[int], bytes]
) -> None:
    response = http.post(
        "/predict", json={"image": b64(canvas_png(1))}, headers={"content-encoding": "identity"}
    )
    assert response.status_code == 200, response.text
