"""TorchServe 0.12 handler for the Glimpse model: the same safetensors weights, loaded through models/.

/predictions answers the top-5 classes; /explanations answers the same attention (evidence) heatmap as
Glimpse's /attention-map: a base64 grayscale PNG of the input's size, from the same forward pass.
Images of one size are stacked into one forward pass per TorchServe batch (the benchmark sends one size),
channels-last like Glimpse's; GLIMPSE_TS_AMP=bfloat16 runs it under autocast, as GLIMPSE_AMP_DTYPE does
(on a CPU with the convolutions packed for oneDNN, as Glimpse's engine does).
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

from models.attention_net import channels_last, upsample_to_input
from models.checkpoint import load_model
from models.packing import prepare_cpu_convolutions
from models.preprocessing import to_model_input


class GlimpseHandler(BaseHandler):  # type: ignore[misc]
    def initialize(self, context: Any) -> None:
        torch.set_num_threads(int(os.environ.get("GLIMPSE_TS_THREADS", "1")))
        properties = context.system_properties
        gpu = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        self.model, self.card = load_model(Path(properties["model_dir"]), self.device)
        self.model = channels_last(self.model.fuse_for_inference())  # as Glimpse serves it
        amp = os.environ.get("GLIMPSE_TS_AMP", "float32")
        self.amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(amp)
        if self.device.type == "cpu":
            prepare_cpu_convolutions(self.model, self.amp_dtype)  # as Glimpse serves it
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> list[torch.Tensor]:
        images = []
        for row in data:
            payload = row.get("file") or row.get("data") or row.get("body")
            if not isinstance(payload, bytes | bytearray):
                raise ValueError("the request carries no image bytes")
            image = Image.open(io.BytesIO(payload))
            image.load()
            images.append(to_model_input(image, self.card.preprocessing))
        return images

    @torch.inference_mode()
    def inference(self, data: list[torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        batch = torch.stack(data).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return self.model(batch)

    def postprocess(self, output: Any) -> list[dict[str, Any]]:
        scores, indices = torch.softmax(output.logits.float(), dim=1).topk(5, dim=1)
        labels = self.card.labels
        return [
            {
                "predictions": [
                    {"label": labels[i], "index": i, "score": s} for i, s in zip(idx, sc, strict=True)
                ]
            }
            for idx, sc in zip(indices.cpu().tolist(), scores.cpu().tolist(), strict=True)
        ]

    @torch.inference_mode()
    def explain_handle(self, data_preprocess: list[torch.Tensor], raw_data: Any) -> list[dict[str, Any]]:
        output = self.inference(data_preprocess)
        results = self.postprocess(output)
        evidence = output.evidence(output.logits.argmax(dim=1)).float().cpu()
        stride = self.card.config.feature_stride
        for result, grid, tensor in zip(results, evidence, data_preprocess, strict=True):
            height, width = tensor.shape[-2:]
            heat = upsample_to_input(grid.clamp(min=0).unsqueeze(0), height, width, stride)[0].numpy()
            peak = float(heat.max())
            scaled = np.rint(heat * (255.0 / peak)) if peak > 0 else np.zeros_like(heat)
            buffer = io.BytesIO()
            Image.fromarray(scaled.astype(np.uint8), mode="L").save(buffer, format="PNG", compress_level=1)
            result["heatmap"] = base64.b64encode(buffer.getvalue()).decode("ascii")
        return results
