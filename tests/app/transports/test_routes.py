"""The HTTP contract, in process: responses field by field, errors, auth, health, metrics, OpenAPI."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

import app.engine.forward as engine_module
import app.pipeline.core as predictor_module
from app.config import Settings
from app.main import create_app
from app.runtime.device import cpu_has_amx_bf16
from app.runtime.launcher import WorkerGroup
from app.schemas import AttentionMapResponsePublic, ModelInfoPublic, PredictResponsePublic
from models.checkpoint import DEFAULT_MODEL_DIR, read_card
from models.data import CanvasSet
from tests.helpers import b64, decode_png, png_bytes, started_client

pytestmark = pytest.mark.anyio
CARD = read_card(DEFAULT_MODEL_DIR)
NOISE = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)  # a PNG of it is ~4 kB


async def test_predict_multipart_single_image(
    client: httpx.AsyncClient, canvases: CanvasSet, canvas_png: Callable[[int], bytes]
) -> None:
    response = await client.post("/predict", files={"file": ("digit.png", canvas_png(0), "image/png")})
    assert response.status_code == 200
    body = response.json()
    PredictResponsePublic.model_validate(body)
    assert body["model"] == {"name": CARD.name, "version": CARD.version}
    predictions = body["predictions"]
    assert len(predictions) == 5
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(CARD.labels[p["index"]] == p["label"] for p in predictions)
    assert predictions[0]["label"] == str(int(canvases.labels[0]))


async def test_predict_top_k_probabilities_sum_to_one(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes]
) -> None:
    response = await client.post("/predict", params={"top_k": 10}, json={"image": b64(canvas_png(1))})
    predictions = response.json()["predictions"]
    assert sorted(p["index"] for p in predictions) == list(range(10))
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)


async def test_several_images_give_results_in_order(
    client: httpx.AsyncClient, canvases: CanvasSet, canvas_png: Callable[[int], bytes]
) -> None:
    indices = [0, 150, 300, 450, 600, 750, 900]
    files = [("file", (f"{i}.png", canvas_png(i), "image/png")) for i in indices]
    multipart = (await client.post("/predict", params={"top_k": 3}, files=files)).json()
    as_json = (
        await client.post(
            "/predict", params={"top_k": 3}, json={"images": [b64(canvas_png(i)) for i in indices]}
        )
    ).json()
    assert len(multipart["results"]) == len(indices)
    for i, result, json_result in zip(indices, multipart["results"], as_json["results"], strict=True):
        single = (
            await client.post("/predict", params={"top_k": 3}, json={"image": b64(canvas_png(i))})
        ).json()
        assert [p["label"] for p in result["predictions"]] == [p["label"] for p in single["predictions"]]
        assert [p["score"] for p in result["predictions"]] == pytest.approx(
            [p["score"] for p in single["predictions"]], abs=1e-5
        )
        assert result == json_result
    expected = [str(int(canvases.labels[i])) for i in indices]
    assert (
        sum(r["predictions"][0]["label"] == e for r, e in zip(multipart["results"], expected, strict=True))
        >= 6
    )


async def test_attention_map_contract(client: httpx.AsyncClient, canvas_png: Callable[[int], bytes]) -> None:
    params: dict[str, str | int] = {
        "overlay": "true",
        "colormap": "viridis",
        "include_grid": "true",
        "target": "3",
        "top_k": 2,
    }
    response = await client.post(
        "/attention-map", params=params, files={"file": ("d.png", canvas_png(5), "image/png")}
    )
    assert response.status_code == 200
    body = response.json()
    AttentionMapResponsePublic.model_validate(body)
    assert (body["target"], body["kind"], body["width"], body["height"]) == ("3", "evidence", 60, 60)
    assert len(body["predictions"]) == 2
    heatmap, overlay = decode_png(body["heatmap"]), decode_png(body["overlay"])
    assert (heatmap.mode, heatmap.size) == ("L", (60, 60))
    assert (overlay.mode, overlay.size) == ("RGB", (60, 60))
    assert np.asarray(heatmap).max() == 255
    assert body["grid_stride"] == 4
    assert np.array(body["grid"]).shape == (15, 15)


async def test_attention_map_defaults_and_kinds(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes]
) -> None:
    image = {"image": b64(png_bytes(np.asarray(decode_png(b64(canvas_png(7))))[:50, :44]))}
    evidence = (await client.post("/attention-map", json=image)).json()
    assert evidence["target"] == evidence["predictions"][0]["label"]
    assert evidence["overlay"] is None
    assert "grid" not in evidence
    assert decode_png(evidence["heatmap"]).size == (44, 50)  # width × height of the input
    other = "0" if evidence["target"] != "0" else "1"
    attention_a = (await client.post("/attention-map", params={"kind": "attention"}, json=image)).json()
    attention_b = (
        await client.post("/attention-map", params={"kind": "attention", "target": other}, json=image)
    ).json()
    assert attention_b["target"] == other
    assert attention_a["heatmap"] == attention_b["heatmap"]  # attention does not depend on the target
    evidence_other = (await client.post("/attention-map", params={"target": other}, json=image)).json()
    assert evidence_other["heatmap"] != evidence["heatmap"]  # evidence does


async def test_heatmap_argmax_lies_in_the_digit_box(
    client: httpx.AsyncClient, canvases: CanvasSet, canvas_png: Callable[[int], bytes]
) -> None:
    sample = list(range(0, 1000, 10))  # 100 canvases, every class
    hits = 0
    for start in range(0, len(sample), 25):
        chunk = sample[start : start + 25]
        response = await client.post("/attention-map", json={"images": [b64(canvas_png(i)) for i in chunk]})
        for index, result in zip(chunk, response.json()["results"], strict=True):
            heat = np.asarray(decode_png(result["heatmap"]))
            y, x = np.unravel_index(int(heat.argmax()), heat.shape)
            x0, y0, x1, y1 = canvases.boxes[index].tolist()
            hits += x0 - 2 <= x <= x1 - 1 + 2 and y0 - 2 <= y <= y1 - 1 + 2
    assert hits >= 97, f"{hits}/100 heatmap maxima inside the digit box"


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"json": {"image": b64(png_bytes(NOISE)[:1000])}}, 400, "invalid_image"),
        ({"json": {"image": b64(b"plain text")}}, 415, "unsupported_image"),
        ({"json": {"image": "***not base64***"}}, 400, "invalid_image"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_request"),
        ({"json": {"picture": "x"}}, 422, "invalid_parameter"),
        ({"json": {"image": b64(png_bytes(np.zeros((8, 8), np.uint8)))}}, 400, "image_too_small"),
        ({"files": {"other": ("a.png", b"x", "image/png")}}, 400, "invalid_request"),
        ({"json": {"image": "x"}, "params": {"top_k": 0}}, 422, "invalid_parameter"),
        ({"json": {"image": "x"}, "params": {"top_k": 11}}, 422, "invalid_parameter"),
        ({"json": {"image": "x"}, "params": {"top_k": "many"}}, 422, "invalid_parameter"),
    ],
)
async def test_client_mistakes_get_the_error_shape(
    client: httpx.AsyncClient, request_kwargs: dict[str, Any], status: int, code: str
) -> None:
    response = await client.post("/predict", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert set(response.json()["error"]) == {"code", "message"}


@pytest.mark.parametrize("endpoint", ["/predict", "/attention-map"])
async def test_an_image_error_in_a_request_of_several_names_the_image(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes], endpoint: str
) -> None:
    good, truncated = canvas_png(0), canvas_png(1)[:150]
    too_small = png_bytes(np.zeros((8, 8), np.uint8))
    files = [("file", ("a.png", good, "image/png")), ("file", ("b.png", truncated, "image/png"))]
    multipart = await client.post(endpoint, files=files)
    as_json = await client.post(endpoint, json={"images": [b64(good), b64(good), b64(too_small)]})
    alone = await client.post(endpoint, files={"file": ("b.png", truncated, "image/png")})
    assert multipart.status_code == 400
    assert multipart.json()["error"]["code"] == "invalid_image"
    assert multipart.json()["error"]["message"].startswith("image 1: the image could not be decoded: ")
    assert as_json.status_code == 400
    assert as_json.json()["error"] == {
        "code": "image_too_small",
        "message": "image 2: the image is 8×8; both sides must be at least 16 pixels",
    }
    assert alone.json()["error"]["message"].startswith("the image could not be decoded: ")


async def test_attention_map_rejects_unknown_target_and_colormap(client: httpx.AsyncClient) -> None:
    for params in ({"target": "cat"}, {"colormap": "jet"}, {"kind": "gradcam"}):
        response = await client.post("/attention-map", params=params, json={"image": "x"})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_parameter"


async def test_limits_give_413(canvas_png: Callable[[int], bytes]) -> None:
    app = create_app(Settings(max_images_per_request=2, max_body_bytes=5000, max_image_pixels=3000))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        three = {"images": [b64(canvas_png(0))] * 3}
        too_many = await http.post("/predict", json=three)
        too_big = await http.post(
            "/predict", content=b"x" * 6000, headers={"content-type": "application/json"}
        )
        pixels = await http.post("/predict", json={"image": b64(canvas_png(0))})  # 3600 > 3000 pixels
    assert (too_many.status_code, too_many.json()["error"]["code"]) == (413, "too_many_images")
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "payload_too_large")
    assert (pixels.status_code, pixels.json()["error"]["code"]) == (413, "image_too_large")


async def test_api_keys_protect_inference_but_not_health_or_metrics(
    canvas_png: Callable[[int], bytes],
) -> None:
    app = create_app(Settings(api_keys=["k1", "k2"]))
    image = {"image": b64(canvas_png(0))}
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        missing = await http.post("/predict", json=image)
        wrong = await http.get("/models", headers={"X-API-Key": "k3"})
        good = await http.post("/predict", json=image, headers={"X-API-Key": "k2"})
        bearer = await http.get("/models", headers={"Authorization": "Bearer k1"})
        open_paths = [
            await http.get(path) for path in ("/health/live", "/health/ready", "/metrics", "/openapi.json")
        ]
        spec = open_paths[-1].json()
        twice = [("X-API-Key", "k1"), ("X-API-Key", "k2")]
        duplicates = [
            await http.post("/predict", json=image, headers=twice),
            await http.post(
                "/predict", json=image, headers={"X-API-Key": "k1", "Authorization": "Bearer k2"}
            ),
            await http.post("/predict", files={"file": ("d.png", canvas_png(0), "image/png")}, headers=twice),
            await http.get("/models", headers=twice),
        ]
    for response in duplicates:  # ambiguous credentials: refused alike on every transport
        assert response.status_code == 401
        assert response.json()["error"]["message"] == "more than one API key in the request: send exactly one"
    assert set(spec["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
    assert spec["paths"]["/predict"]["post"]["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert "security" not in spec["paths"]["/health/ready"]["get"]
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "unauthorized")
    assert missing.headers["WWW-Authenticate"] == "ApiKey"
    assert wrong.status_code == 401
    assert (good.status_code, bearer.status_code) == (200, 200)
    assert [r.status_code for r in open_paths] == [200, 200, 200, 200]


async def test_health_transitions_through_the_lifespan(settings: Settings) -> None:
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        before = await http.get("/health/ready")
        before_predict = await http.post("/predict", json={"image": "x"})
        async with app.router.lifespan_context(app):
            during = await http.get("/health/ready")
        after = await http.get("/health/ready")
        live = await http.get("/health/live")
    assert (before.status_code, before.json()["error"]["code"], before.headers["Retry-After"]) == (
        503,
        "not_ready",
        "1",
    )
    assert before_predict.status_code == 503
    assert (during.status_code, during.json()) == (200, {"status": "ready"})
    assert after.status_code == 503
    assert (live.status_code, live.json()) == (200, {"status": "alive"})


async def test_ready_waits_for_every_worker_of_the_group(settings: Settings) -> None:
    app = create_app(settings)
    group = WorkerGroup(2, multiprocessing.get_context("spawn"))
    app.state.service.peers_not_ready = group.not_ready_reason
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
        app.router.lifespan_context(app),
    ):
        group.mark_listening()
        one = await http.get("/health/ready")
        served = await http.post("/predict", json={"image": b64(png_bytes(NOISE))})
        group.mark_listening()
        both = await http.get("/health/ready")
    assert (one.status_code, one.headers["Retry-After"]) == (503, "1")
    assert one.json() == {"error": {"code": "not_ready", "message": "1 of 2 workers are ready"}}
    assert served.status_code == 200  # a worker that is up serves; only the probe waits for the rest
    assert (both.status_code, both.json()) == (200, {"status": "ready"})


async def test_models_describes_the_card(client: httpx.AsyncClient) -> None:
    body = (await client.get("/models")).json()
    ModelInfoPublic.model_validate(body)
    assert (body["name"], body["version"], body["labels"]) == (CARD.name, CARD.version, CARD.labels)
    assert body["input"]["min_size"] == CARD.preprocessing.min_size
    assert body["input"]["feature_stride"] == CARD.config.feature_stride
    assert body["evaluation"] == CARD.evaluation
    expected = "bfloat16" if cpu_has_amx_bf16() else "float32"  # GLIMPSE_AMP_DTYPE=auto on a CPU
    assert body["runtime"] == {"device": "cpu", "precision": expected}


async def test_models_reports_the_precision_that_was_asked_for(settings: Settings) -> None:
    settings.amp_dtype = "float32"
    async for http in started_client(settings):
        assert (await http.get("/models")).json()["runtime"] == {"device": "cpu", "precision": "float32"}


async def test_maps_rendered_in_the_batch_equal_maps_rendered_per_image(
    settings: Settings, canvas_png: Callable[[int], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large images' heat maps are rendered by the predictor instead of the engine: same pixels."""
    files = [("file", (f"{i}.png", canvas_png(i), "image/png")) for i in range(3)]
    answers = []
    for render_max_pixels in (engine_module.RENDER_IN_BATCH_MAX_PIXELS, 0):
        monkeypatch.setattr(engine_module, "RENDER_IN_BATCH_MAX_PIXELS", render_max_pixels)
        async for http in started_client(settings):
            evidence = await http.post("/attention-map", params={"overlay": "true"}, files=files)
            attention = await http.post("/attention-map", params={"kind": "attention"}, files=files)
            answers.append((evidence.json(), attention.json()))
    assert answers[0] == answers[1]


@pytest.mark.parametrize("amp_dtype", ["float32", "bfloat16"])
async def test_small_images_decoded_inline_answer_as_the_pool_does(
    settings: Settings, canvas_png: Callable[[int], bytes], monkeypatch: pytest.MonkeyPatch, amp_dtype: str
) -> None:
    """Images up to INLINE_MAX_PIXELS skip the decode pool; the answers must not depend on the route."""
    settings.amp_dtype = amp_dtype  # type: ignore[assignment]
    files = [("file", (f"{i}.png", canvas_png(i), "image/png")) for i in range(3)]
    params: dict[str, str | int] = {"top_k": 10, "overlay": "true", "include_grid": "true"}
    answers = []
    for inline_max_pixels in (predictor_module.INLINE_MAX_PIXELS, 0):  # 60×60 inline, then via the pool
        monkeypatch.setattr(predictor_module, "INLINE_MAX_PIXELS", inline_max_pixels)
        async for http in started_client(settings):
            predict = await http.post("/predict", params={"top_k": 10}, files=files)
            attention = await http.post("/attention-map", params=params, files=files)
            answers.append((predict.json(), attention.json()))
    assert answers[0] == answers[1]


async def test_metrics_count_requests_batches_and_images(
    client: httpx.AsyncClient, canvas_png: Callable[[int], bytes]
) -> None:
    await client.post("/predict", json={"images": [b64(canvas_png(0))] * 3})
    await client.post("/predict", params={"top_k": 0}, json={"image": "x"})
    text = (await client.get("/metrics")).text
    assert 'glimpse_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'glimpse_requests_total{method="POST",route="/predict",status="422"} 1.0' in text
    assert 'glimpse_images_per_request_sum{route="/predict"} 3.0' in text
    for name in (
        "glimpse_request_duration_seconds_bucket",
        "glimpse_queue_depth",
        "glimpse_batch_size_bucket",
        "glimpse_inference_duration_seconds_bucket",
        "glimpse_queue_wait_seconds_bucket",
    ):
        assert name in text


async def test_unknown_paths_and_methods_use_the_error_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nope")
    wrong_method = await client.get("/predict")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, "method_not_allowed")


async def test_openapi_documents_uploads_examples_and_errors(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in ("/predict", "/attention-map"):
        operation = spec["paths"][path]["post"]
        content = operation["requestBody"]["content"]
        file = content["multipart/form-data"]["schema"]["properties"]["file"]
        assert (file["items"]["format"], file["maxItems"]) == ("binary", 32)
        shapes = content["application/json"]["schema"]["oneOf"]
        assert [shape["required"] for shape in shapes] == [["image"], ["images"]]
        assert shapes[1]["properties"]["images"]["maxItems"] == 32
        messages = set()
        for status in ("400", "401", "413", "415", "422", "503", "504"):
            example = operation["responses"][status]["content"]["application/json"]["example"]
            messages.add(example["error"]["message"])
        assert len(messages) == 7  # each status its own example
        top_k = next(p for p in operation["parameters"] if p["name"] == "top_k")
        assert top_k["schema"]["maximum"] == len(CARD.labels)
    attention = spec["paths"]["/attention-map"]["post"]
    assert "A_ij·(w_c·F_ij)" in attention["description"]
    assert {p["name"] for p in attention["parameters"]} == {
        "top_k",
        "target",
        "kind",
        "overlay",
        "colormap",
        "include_grid",
    }
    target = next(p for p in attention["parameters"] if p["name"] == "target")
    assert target["schema"]["enum"] == CARD.labels
    assert "AttentionMapResponsePublic" in spec["components"]["schemas"]
    assert "securitySchemes" not in spec["components"]  # no keys configured: nothing to send
    model = spec["components"]["schemas"]["ModelRefPublic"]["properties"]
    assert (model["name"]["examples"], model["version"]["examples"]) == ([CARD.name], [CARD.version])
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text


async def test_internal_errors_are_generic(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, canvas_png: Callable[[int], bytes]
) -> None:
    from app.pipeline import answers

    def explode(*_: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(answers, "predictions", explode)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # what a real server does
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        response = await http.post("/predict", json={"image": b64(canvas_png(0))})
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
