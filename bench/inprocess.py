"""In-process figures, no HTTP: the ceiling (decode → forward → encode) and Grad-CAM's cost per map.

Prints one JSON object. ``--model-dir`` and ``--image`` pick the model and the request image;
``--device cuda`` runs the forward passes on the GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import torch
from PIL import Image

from app.config import Settings
from app.engine.engine import EngineConfig, InferenceEngine
from app.engine.work import MapRequest, Prediction
from app.pipeline import answers
from app.pipeline.answers import Domain
from app.pipeline.imaging import DecodedImage, convert_image, open_image
from app.pipeline.query import Query
from app.runtime.device import Precision, choose_amp_dtype
from app.runtime.metrics import Metrics
from models.attention_net import AttentionNet, upsample_to_input
from models.checkpoint import DEFAULT_MODEL_DIR, ModelCard, Preprocessing, load_model
from models.maps import scale_peaks_to_255
from models.preprocessing import normalize_pixels

IN_DOMAIN = Domain(True, 1.0)  # the answers' verdict; the forward pass scores it (forward_batch)


@dataclass(frozen=True)
class InProcess:
    """The service's engine and answers for one model, without the server around them."""

    engine: InferenceEngine
    card: ModelCard

    def prediction(self, prediction: Prediction) -> dict[str, Any]:
        model = {"name": self.card.name, "version": self.card.version}
        return answers.prediction(model, self.card.labels, prediction, IN_DOMAIN)

    def render_map(self, decoded: DecodedImage, prediction: Prediction) -> dict[str, Any]:
        model = {"name": self.card.name, "version": self.card.version}
        stride = self.card.config.feature_stride
        return answers.attention_map(model, self.card.labels, stride, Query(), decoded, prediction, IN_DOMAIN)


def ceiling(predictor: InProcess, data: bytes, batch: int, seconds: float, attention: bool) -> float:
    """Images per second through decode → batched forward → JSON (and the PNG map), one thread."""
    engine, card = predictor.engine, predictor.card
    request = MapRequest("evidence") if attention else None
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        decoded = [decode_image(data, card.preprocessing) for _ in range(batch)]
        predictions = engine.forward.forward_batch(
            [d.pixels for d in decoded], [5] * batch, [request] * batch
        )
        for image, prediction in zip(decoded, predictions, strict=True):
            if attention:
                orjson.dumps(predictor.render_map(image, prediction))
            else:
                orjson.dumps(predictor.prediction(prediction))
        done += batch
    return done / (time.perf_counter() - started)


def build_predictor(
    model_dir: Path,
    device: torch.device,
    batch: int,
    amp: Literal["auto"] | Precision = "auto",
    cuda_graphs_size: int | None = None,
) -> InProcess:
    """The service's engine and answers for ``model_dir``, without the server around them.

    ``cuda_graphs_size``: on CUDA, warm up and record the engine's CUDA graphs for images of this side.
    """
    model, card = load_model(model_dir, device)
    model.fuse_for_inference()
    graphs = cuda_graphs_size is not None
    settings = Settings(_env_file=None, max_batch_size=batch, cuda_graphs=graphs)
    config = EngineConfig.from_settings(settings, choose_amp_dtype(amp, device))
    engine = InferenceEngine(model, card.preprocessing, device, config, Metrics())
    if cuda_graphs_size is not None:
        asyncio.run(engine.warm_up(card.config.in_channels, cuda_graphs_size, batch))
    return InProcess(engine, card)


def decode_image(data: bytes, spec: Preprocessing) -> DecodedImage:
    """The predictor's decoding of one image: header checks (no limits that matter here), then pixels."""
    return convert_image(open_image(data, 1 << 26, 16), spec)


def raw_forward(model: AttentionNet, x: torch.Tensor, seconds: float) -> float:
    """Images per second of the bare batched forward pass on a ready tensor."""
    with torch.inference_mode():
        model(x)
        _sync(x.device)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(x)
            done += x.shape[0]
        _sync(x.device)
    return done / (time.perf_counter() - started)


def grad_cam(model: AttentionNet, x: torch.Tensor, stride: int) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) on the last backbone features: one forward, one backward."""
    features, mask = model.forward_features(x.requires_grad_(False))
    features.retain_grad()
    logits, _ = model.forward_head(features, mask)
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()  # type: ignore[no-untyped-call]
    assert features.grad is not None
    weights = features.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * features).sum(1)).detach()
    return upsample_to_input(cam, x.shape[-2], x.shape[-1], stride)


def map_cost(
    predictor: InProcess, model: AttentionNet, data: bytes, batch: int, seconds: float
) -> dict[str, float]:
    """Seconds per map at ``batch`` images: our map (forward + render) vs Grad-CAM (+ the same render).

    Grad-CAM is timed in float32 and under the engine's autocast, if any, and its faster one counts:
    autocast's per-call casts make it slower alone and faster in a batch on this model.
    """
    card, engine = predictor.card, predictor.engine
    amp = engine.config.forward.amp_dtype
    decoded = [decode_image(data, card.preprocessing) for _ in range(batch)]

    def ours() -> None:
        predictions = engine.forward.forward_batch(
            [d.pixels for d in decoded], [5] * batch, [MapRequest("evidence")] * batch
        )
        for image, prediction in zip(decoded, predictions, strict=True):
            predictor.render_map(image, prediction)

    def gradcam(autocast: bool) -> None:
        x = normalize_pixels(torch.stack([d.pixels for d in decoded]), card.preprocessing, engine.device)
        with torch.autocast(engine.device.type, dtype=amp, enabled=autocast):
            maps = grad_cam(model, x, card.config.feature_stride).float()
        heats = (
            scale_peaks_to_255(maps).round_().to(torch.uint8).cpu().numpy()
        )  # the same scaling and PNG work as ours
        for image, grid, heat in zip(decoded, maps.cpu(), heats, strict=True):
            predictor.render_map(image, _as_prediction(grid, heat))

    costs = {"attention_map_s": _per_image(ours, batch, seconds)}
    costs["grad_cam_float32_s"] = _per_image(lambda: gradcam(False), batch, seconds)
    if amp is not None:
        costs["grad_cam_autocast_s"] = _per_image(lambda: gradcam(True), batch, seconds)
    costs["grad_cam_s"] = min(costs["grad_cam_float32_s"], costs.get("grad_cam_autocast_s", float("inf")))
    return costs


def _as_prediction(grid: torch.Tensor, heat: Any) -> Any:
    from app.engine.work import Prediction

    return Prediction([0], [1.0], target=0, grid=grid, heat=heat)


def _per_image(function: Any, batch: int, seconds: float) -> float:
    function()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        function()
        done += batch
    return (time.perf_counter() - started) / done


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--image", type=Path, default=Path(__file__).with_name("canvas60.png"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = one per core")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--amp", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--cuda-graphs", action="store_true", help="the engine's CUDA graphs (CUDA only)")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = args.image.read_bytes()
    graphs_size = None
    if args.cuda_graphs:
        with Image.open(args.image) as image:
            if image.width != image.height:
                parser.error("--cuda-graphs records square images only; the image is not square")
            graphs_size = image.width
    predictor = build_predictor(args.model_dir, device, args.batch, args.amp, graphs_size)
    engine, card = predictor.engine, predictor.card
    amp = engine.config.forward.amp_dtype
    decoded = decode_image(data, card.preprocessing)
    x = normalize_pixels(torch.stack([decoded.pixels] * args.batch), card.preprocessing, device)
    x = x.contiguous(memory_format=torch.channels_last)
    cores = len(os.sched_getaffinity(0))
    result: dict[str, Any] = {
        "batch": args.batch,
        "precision": engine.precision,
        "cuda_graphs": graphs_size is not None,
        "by_torch_threads": {},
    }
    # The ceiling is the best of one thread and one per core: on a shared 2-core machine OpenMP's
    # barrier makes two threads slower whenever another process holds a core.
    for threads in sorted({args.threads} if args.threads else {1, cores}):
        torch.set_num_threads(threads)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            raw = raw_forward(engine.forward.model, x, args.seconds)
        result["by_torch_threads"][threads] = {
            "raw_forward_images_per_s": raw,
            "ceiling_predict_images_per_s": ceiling(predictor, data, args.batch, args.seconds, False),
            "ceiling_attention_images_per_s": ceiling(predictor, data, args.batch, args.seconds, True),
        }
    for key in ("raw_forward_images_per_s", "ceiling_predict_images_per_s", "ceiling_attention_images_per_s"):
        result[key] = max(figures[key] for figures in result["by_torch_threads"].values())
    best = max(
        result["by_torch_threads"],
        key=lambda t: result["by_torch_threads"][t]["ceiling_predict_images_per_s"],
    )
    torch.set_num_threads(best)
    result["torch_threads"] = best
    grad_model, _ = load_model(args.model_dir, device)
    grad_model.fuse_for_inference()
    for batch in (1, args.batch):
        costs = map_cost(predictor, grad_model, data, batch, args.seconds / 2)
        result[f"map_cost_batch{batch}"] = {
            **costs,
            "grad_cam_over_ours": costs["grad_cam_s"] / costs["attention_map_s"],
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
