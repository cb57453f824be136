"""End to end through the Open Inference Protocol: Triton's own client (tritonclient[http]) and KServe's
REST client against a real uvicorn server; the answers equal /predict's and /attention-map's."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from models.checkpoint import DEFAULT_MODEL_DIR, read_card
from models.data import CanvasSet
from tests.helpers import E2E_API_KEY, b64, decode_png

CARD = read_card(DEFAULT_MODEL_DIR)


def key() -> dict[str, str]:
    """The API key header, a new dict each call: tritonclient adds its own headers to the one it is given."""
    return {"X-API-Key": E2E_API_KEY}


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(urlsplit(server).netloc, network_timeout=30.0) as connected:
        yield connected


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=key(), timeout=30) as connected:
        yield connected


def image_input(images: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    elements = images if binary else [base64.b64encode(image) for image in images]
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(CARD.name, headers=key())
    assert client.is_model_ready(CARD.name, CARD.version, headers=key())
    assert not client.is_model_ready("no-such-model", headers=key())
    server = client.get_server_metadata()
    assert server["name"] == "glimpse"
    assert "binary_tensor_data" in server["extensions"]
    metadata = client.get_model_metadata(CARD.name, headers=key())
    assert metadata == client.get_model_metadata(CARD.name, CARD.version, headers=key())
    assert metadata["name"] == CARD.name
    assert metadata["versions"] == [CARD.version]
    assert metadata["parameters"]["labels"] == CARD.labels
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label", "heatmap"]


def test_model_routes_need_the_api_key(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="missing API key") as raised:
        client.get_model_metadata(CARD.name)
    assert raised.value.status() == "401"
    with pytest.raises(InferenceServerException, match="invalid API key"):
        client.infer(CARD.name, [image_input([b"x"])], headers={"X-API-Key": "wrong"})


@pytest.mark.parametrize("binary", [True, False], ids=["binary BYTES", "JSON BYTES"])
def test_infer_equals_predict_and_attention_map(
    client: triton.InferenceServerClient,
    http: httpx.Client,
    canvases: CanvasSet,
    canvas_png: Callable[[int], bytes],
    binary: bool,
) -> None:
    indices = [7, 250, 611]
    images = [canvas_png(i) for i in indices]
    outputs = [
        triton.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label", "heatmap")
    ]
    result = client.infer(CARD.name, [image_input(images, binary)], outputs=outputs, headers=key())
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, len(CARD.labels))
    labels = [x if isinstance(x, bytes) else x.encode() for x in result.as_numpy("label").tolist()]
    assert labels == [str(int(canvases.labels[i])).encode() for i in indices]  # JSON BYTES come back as str
    heatmaps = result.as_numpy("heatmap")
    assert (heatmaps.dtype, heatmaps.shape) == (np.uint8, (3, 60, 60))
    for row, image in enumerate(images):
        predicted = http.post(
            "/predict", params={"top_k": len(CARD.labels)}, json={"image": b64(image)}
        ).json()
        expected = np.zeros(len(CARD.labels), np.float32)
        for entry in predicted["predictions"]:
            expected[entry["index"]] = entry["score"]
        np.testing.assert_allclose(probabilities[row], expected, rtol=1e-5, atol=1e-6)
        drawn = http.post("/attention-map", json={"image": b64(image)}).json()
        np.testing.assert_array_equal(heatmaps[row], np.asarray(decode_png(drawn["heatmap"])))


def test_requested_outputs_only(
    client: triton.InferenceServerClient, canvas_png: Callable[[int], bytes]
) -> None:
    outputs = [triton.InferRequestedOutput("label")]
    result = client.infer(
        CARD.name, [image_input([canvas_png(1)])], outputs=outputs, headers=key(), request_id="r-1"
    )
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["label"]
    assert response["id"] == "r-1"
    assert (response["model_name"], response["model_version"]) == (CARD.name, CARD.version)


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_infer_with_uint8_pixels(
    client: triton.InferenceServerClient,
    http: httpx.Client,
    canvas_png: Callable[[int], bytes],
    channels: int | None,
) -> None:
    images = [Image.open(io.BytesIO(canvas_png(i))) for i in (12, 13)]
    mode = "RGB" if channels == 3 else "L"
    arrays = np.stack([np.asarray(image.convert(mode)) for image in images])
    if channels == 1:
        arrays = arrays[..., None]
    tensor = triton.InferInput("pixels", list(arrays.shape), "UINT8")
    tensor.set_data_from_numpy(arrays)
    outputs = [triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("heatmap")]
    parameters = {"kind": "attention", "target": "3"}
    result = client.infer(CARD.name, [tensor], outputs=outputs, headers=key(), parameters=parameters)
    for row, image in enumerate(images):
        png = io.BytesIO()
        image.save(png, format="PNG")
        params: dict[str, str | int] = {"top_k": len(CARD.labels), "kind": "attention", "target": "3"}
        drawn = http.post("/attention-map", params=params, json={"image": b64(png.getvalue())}).json()
        expected = np.zeros(len(CARD.labels), np.float32)
        for entry in drawn["predictions"]:
            expected[entry["index"]] = entry["score"]
        np.testing.assert_allclose(result.as_numpy("probabilities")[row], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(
            result.as_numpy("heatmap")[row], np.asarray(decode_png(drawn["heatmap"]))
        )


def test_errors_are_the_protocol_shape(http: httpx.Client, client: triton.InferenceServerClient) -> None:
    response = http.post(f"/v2/models/{CARD.name}/infer", json={"inputs": [{"name": "img", "shape": [1],
                         "datatype": "BYTES", "data": ["YQ=="]}]})  # fmt: skip
    assert response.status_code == 400
    assert response.json() == {"error": response.json()["error"]}
    assert "unknown input 'img'" in response.json()["error"]
    missing = http.get("/v2/models/resnet50")
    assert missing.status_code == 404
    assert "unknown model 'resnet50'" in missing.json()["error"]
    with pytest.raises(InferenceServerException, match=r"could not be read|not recognised"):
        client.infer(CARD.name, [image_input([b"not an image"])], headers=key())


def test_kserve_rest_client(server: str, canvases: CanvasSet, canvas_png: Callable[[int], bytes]) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def talk() -> dict[str, Any]:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            assert await client.is_server_live(server)
            assert await client.is_server_ready(server)
            assert await client.is_model_ready(server, CARD.name, headers=key())
            images = [b64(canvas_png(i)) for i in (20, 21)]
            request = InferRequest(
                CARD.name,
                infer_inputs=[InferInput("image", [2], "BYTES", data=images)],
                request_id="kserve-1",
            )
            response = await client.infer(server, request, model_name=CARD.name, headers=key())
            return {output.name: output.data for output in response.outputs} | {"id": response.id}
        finally:
            await client.close()

    answer = asyncio.run(talk())
    assert answer["id"] == "kserve-1"
    assert answer["label"] == [str(int(canvases.labels[i])) for i in (20, 21)]
    assert len(answer["probabilities"]) == 2 * len(CARD.labels)
