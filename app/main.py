"""The Glimpse service: ``create_app()`` wires settings, routers and error handlers; ``lifespan`` loads
and warms the model before the app reports ready.

Run it with ``uvicorn app.main:app``; every setting comes from ``GLIMPSE_*`` environment variables.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from app.config import Settings, get_settings
from app.docs import install_docs
from app.engine.forward import EngineConfig, InferenceEngine
from app.errors import install_error_handlers
from app.pipeline.predictor import Limits, Predictor
from app.runtime.device import choose_amp_dtype, choose_device, configure_torch
from app.runtime.lifecycle import DeviceUnavailable, QuietStartupFailure, StartupFailed, drain_on_sigterm
from app.runtime.memory import FreedMemoryTrimmer, bound_kernel_caches
from app.runtime.metrics import Metrics, MetricsMiddleware
from app.transports.fast_path import HotPath
from app.transports.routes import attention, health, metrics, models, predict
from app.transports.v2 import routes as v2
from models.attention_net import AttentionNet
from models.checkpoint import ModelArtifactError, ModelCard, load_model

logger = logging.getLogger("glimpse")

DESCRIPTION = """
Image classification with a visual-attention network: class probabilities from `POST /predict`, and
from `POST /attention-map` a heatmap of the evidence behind a class — from the same forward pass.
Concurrent requests are batched dynamically. Errors always have the shape
`{"error": {"code": "...", "message": "..."}}`.
"""


async def load_or_fail(app: FastAPI, settings: Settings) -> tuple[AttentionNet, ModelCard, torch.device]:
    """Choose the device and load the verified model, or log one line and raise :class:`StartupFailed`."""
    try:
        device = choose_device(settings.device)
        configure_torch(settings, device)
        model, card = await asyncio.to_thread(load_model, settings.model_dir, device)
    except (ModelArtifactError, OSError, DeviceUnavailable) as exc:
        reason = " ".join(str(exc).split())  # one line, even for torch's multi-line state_dict errors
        logger.critical("startup failed: %s (GLIMPSE_MODEL_DIR=%s)", reason, settings.model_dir)
        app.state.startup_failed = True
        raise StartupFailed(str(exc)) from None
    return model.fuse_for_inference(), card, device


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the artifact (hash-verified), choose the device, fuse BN, warm up; then mark ready."""
    settings: Settings = app.state.settings
    logger.setLevel(settings.log_level.upper())
    if not logger.handlers and not logging.getLogger().handlers:  # uvicorn configures only its own loggers
        logging.basicConfig(format="%(levelname)s:     %(name)s: %(message)s")
    started = time.perf_counter()
    bound_kernel_caches()  # before the warm-up builds the first oneDNN kernel
    model, card, device = await load_or_fail(app, settings)
    engine_config = EngineConfig(
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        max_queue_size=settings.max_queue_size,
        max_batch_pixels=settings.max_image_pixels,
        amp_dtype=choose_amp_dtype(settings.amp_dtype, device),
        channels_last=settings.channels_last,
        inline_max_seconds=settings.inline_forward_max_s(),
        cuda_graphs=settings.cuda_graphs,
    )
    engine = InferenceEngine(model, card.preprocessing, device, engine_config, app.state.metrics)
    warm_size = max(settings.warmup_image_size, card.preprocessing.min_size)
    await engine.warm_up(card.config.in_channels, warm_size, settings.max_batch_size)
    engine.start()
    # Everything alive now (torch, the app, the model) lives as long as the process. Freezing it takes
    # it out of the collector's full passes, which otherwise walk ~200k objects (68 ms here;
    # bench/HISTORY.md has the command) whenever they run and stall every request in flight.
    gc.collect()
    gc.freeze()
    pool = ThreadPoolExecutor(
        settings.decode_threads or settings.cores_per_worker, thread_name_prefix="glimpse-decode"
    )
    limits = Limits(
        max_image_pixels=settings.max_image_pixels,
        min_image_size=settings.min_image_size or card.preprocessing.min_size,
        request_timeout_s=settings.request_timeout_s,
    )
    app.state.predictor = Predictor(engine, card, limits, pool)
    # A rare big batch must not raise RSS for good; on CUDA the trims cost more than they give back.
    trim_interval_s = settings.trim_interval_s(device.type)
    trimmer = FreedMemoryTrimmer(trim_interval_s).start() if trim_interval_s > 0 else None
    app.state.ready = True
    logger.info(
        "ready in %.2f s: %s %s on %s (%s), batch ≤ %d, delay ≤ %.1f ms",
        time.perf_counter() - started, card.name, card.version, device, engine.precision,
        settings.max_batch_size, settings.max_batch_delay_ms,
    )  # fmt: skip
    restore_sigterm = drain_on_sigterm(app, settings.shutdown_drain_s)
    try:
        yield
    finally:
        restore_sigterm()
        app.state.ready = False
        await engine.stop()
        pool.shutdown(wait=True)
        if trimmer is not None:
            trimmer.stop()
        app.state.predictor = None
        logger.info("stopped")


class GlimpseAPI(FastAPI):
    """FastAPI with the hot path (:mod:`app.transports.fast_path`) outside all of its middleware."""

    def build_middleware_stack(self) -> ASGIApp:
        return HotPath(super().build_middleware_stack())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing heavy happens until the lifespan starts."""
    settings = settings or get_settings()
    app = GlimpseAPI(
        title="Glimpse",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by install_docs with local assets (no CDN)
        redoc_url=None,
        openapi_tags=[
            {"name": "inference", "description": "Predictions and attention maps."},
            {"name": "models", "description": "The served model."},
            {"name": "health", "description": "Probes for orchestrators."},
            {"name": "metrics", "description": "Prometheus metrics."},
        ],
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.predictor = None
    app.state.ready = False
    app.state.draining = False
    app.state.worker_group = None  # python -m app.serve sets it when it runs several workers
    app.state.startup_failed = False
    install_error_handlers(app)
    install_docs(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(QuietStartupFailure)
    for module in (predict, attention, models, health, metrics):
        app.include_router(module.router)
    app.include_router(v2.health)  # the Open Inference Protocol: GET /v2 and its health probes
    app.include_router(v2.models)  # /v2/models/...: metadata, readiness, infer
    return app


app = create_app()
