"""The endpoint a first version would have: FastAPI, one request at a time, no batching.

Run: ``uvicorn bench.naive_server:app``. Same model, same preprocessing and the same JSON as Glimpse;
the forward pass runs on the event loop, so requests are served strictly one after another. It runs on
``GLIMPSE_DEVICE`` (default ``cpu``; ``cuda`` on the GPU host), as a first version would: no AMP.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, UploadFile
from PIL import Image

from models.attention_net import upsample_to_input
from models.checkpoint import DEFAULT_MODEL_DIR, load_model
from models.preprocessing import to_model_input

device = torch.device(os.environ.get("GLIMPSE_DEVICE", "cpu"))
model, card = load_model(DEFAULT_MODEL_DIR, device)
model.fuse_for_inference()
app = FastAPI(title="naive Glimpse")


def _predictions(logits: torch.Tensor) -> list[dict[str, Any]]:
    scores, indices = torch.softmax(logits, dim=1).topk(5, dim=1)
    scores, indices = scores.cpu(), indices.cpu()
    return [
        {"label": card.labels[i], "index": i, "score": s}
        for i, s in zip(indices[0].tolist(), scores[0].tolist(), strict=True)
    ]


@app.get("/health/ready")
async def ready() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/predict")
async def predict(file: UploadFile) -> dict[str, Any]:
    image = Image.open(io.BytesIO(await file.read()))
    with torch.inference_mode():
        output = model(to_model_input(image, card.preprocessing).unsqueeze(0).to(device))
    return {"predictions": _predictions(output.logits)}


@app.post("/attention-map")
async def attention_map(file: UploadFile) -> dict[str, Any]:
    image = Image.open(io.BytesIO(await file.read()))
    with torch.inference_mode():
        output = model(to_model_input(image, card.preprocessing).unsqueeze(0).to(device))
        grid = output.evidence(output.logits.argmax(dim=1))[0].clamp(min=0)
        heat = (
            upsample_to_input(grid.unsqueeze(0), image.height, image.width, card.config.feature_stride)[0]
            .cpu()
            .numpy()
        )
    peak = float(heat.max())
    scaled = np.rint(heat * (255.0 / peak)) if peak > 0 else np.zeros_like(heat)
    buffer = io.BytesIO()
    Image.fromarray(scaled.astype(np.uint8), mode="L").save(buffer, format="PNG", compress_level=1)
    return {
        "predictions": _predictions(output.logits),
        "heatmap": base64.b64encode(buffer.getvalue()).decode(),
    }
