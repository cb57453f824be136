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
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app import openapi
from app.config import Settings, get_settings
from app.docs import install_docs
from app.engine.engine import EngineConfig, InferenceEngine
from app.errors import install_error_handlers
from app.pipeline.core import Pipeline
from app.runtime.device import check_amp_dtype, choose_amp_dtype, choose_device, configure_torch
from app.runtime.lifecycle import DeviceUnavailable, QuietStartupFailure, StartupFailed, drain_on_sigterm
from app.runtime.memory import FreedMemoryTrimmer, bound_kernel_caches
from app.runtime.metrics import Metrics, MetricsMiddleware
from app.state import ServiceState, service_state
from app.transports.fast_path import FastPath
from app.transports.routes import attention, demo, health, metrics, models, predict
from app.transports.v2 import routes as v2
from models.attention_net import AttentionNet
from models.checkpoint import ModelArtifactError, ModelCard, load_model
from models.domain import DomainScorer, load_domain_scorer

logger = logging.getLogger("glimpse")

DESCRIPTION = """
Image classification with a visual-attention network: class probabilities from `POST /predict`, and
from `POST /attention-map` a heatmap of the evidence behind a class — from the same forward pass.
Concurrent requests are batched dynamically. Errors always have the shape
`{"error": {"code": "...", "message": "..."}}`.

**What the bundled model reads:** handwritten digits, light strokes on a dark background, about 28
pixels tall, on canvases of any size from 16 pixels up. Dark strokes on a light background and
drawings with transparency are brought to that polarity first (`GET /models`, `input.polarity`).
Every answer says whether the image looks like what the model was trained for
(`domain.in_distribution`, `domain.score` from 0 to 1) and, when it does not, carries a `warning`:
the scores of such an image are unreliable.

**Images in answers** (`heatmap`, `overlay`) are base64-encoded PNG files: decode the base64 and
open the bytes with any image library. The demo page at [`/`](/) draws them over the input.
"""


async def load_or_fail(
    state: ServiceState,
) -> tuple[AttentionNet, ModelCard, DomainScorer | None, torch.device]:
    """Choose the device and load the verified model and its in-domain scorer, or log one line and
    raise :class:`StartupFailed`."""
    settings = state.settings
    try:
        device = choose_device(settings.device)
        check_amp_dtype(settings.amp_dtype, device)
        configure_torch(settings, device)
        model, card = await asyncio.to_thread(load_model, settings.model_dir, device)
        domain = load_domain_scorer(settings.model_dir, card)
    except (ModelArtifactError, OSError, DeviceUnavailable) as exc:
        reason = " ".join(str(exc).split())  # one line, even for torch's multi-line state_dict errors
        logger.critical("startup failed: %s (GLIMPSE_MODEL_DIR=%s)", reason, settings.model_dir)
        state.startup_failed = True
        raise StartupFailed(str(exc)) from None
    return model.fuse_for_inference(), card, domain, device


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the artifact (hash-verified), choose the device, fuse BN, warm up; then mark ready."""
    state = service_state(app)
    settings = state.settings
    logger.setLevel(settings.log_level.upper())
    if not logger.handlers and not logging.getLogger().handlers:  # uvicorn configures only its own loggers
        logging.basicConfig(format="%(levelname)s:     %(name)s: %(message)s")
    started = time.perf_counter()
    bound_kernel_caches()  # before the warm-up builds the first oneDNN kernel
    model, card, domain, device = await load_or_fail(state)
    engine_config = EngineConfig.from_settings(settings, choose_amp_dtype(settings.amp_dtype, device))
    engine = InferenceEngine(model, card.preprocessing, device, engine_config, state.metrics, domain)
    warm_size = max(settings.warmup_image_size, card.preprocessing.min_size)
    await engine.warm_up(card.config.in_channels, warm_size, settings.max_batch_size)
    engine.start()
    # Everything alive now (torch, the app, the model) lives as long as the process. Freezing it takes
    # it out of the collector's full passes, which otherwise walk ~200k objects whenever they run and
    # stall every request in flight for tens of milliseconds.
    gc.collect()
    gc.freeze()
    pool = ThreadPoolExecutor(
        settings.decode_threads or settings.cores_per_worker, thread_name_prefix="glimpse-decode"
    )
    limits = settings.pipeline_limits(card.preprocessing.min_size)
    state.pipeline = Pipeline(engine, card, limits, pool, state.metrics, settings.api_keys, domain)
    # A rare big batch must not raise RSS for good; on CUDA the trims cost more than they give back.
    trim_interval_s = settings.trim_interval_s(device.type)
    trimmer = FreedMemoryTrimmer(trim_interval_s).start() if trim_interval_s > 0 else None
    state.ready = True
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
        state.ready = False
        await engine.stop()
        pool.shutdown(wait=True)
        if trimmer is not None:
            trimmer.stop()
        state.pipeline = None
        logger.info("stopped")


class HeadAsGet:
    """HEAD is GET without the body (RFC 9110 §9.1), and uptime monitors and ``curl -I`` send it; FastAPI
    routes list GET alone. So HEAD is routed as GET, and the server, which reads the method from its own
    scope, sends the headers without the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


class GlimpseAPI(FastAPI):
    """FastAPI with the fast path (:mod:`app.transports.fast_path`) outside all of its middleware, and
    an OpenAPI document completed from the served model (:mod:`app.openapi`)."""

    def build_middleware_stack(self) -> ASGIApp:
        return FastPath(HeadAsGet(super().build_middleware_stack()), service_state(self))

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        schema = super().openapi()
        state = service_state(self)
        if state.pipeline is None:  # the model is not known yet: do not keep an incomplete document
            self.openapi_schema = None
            return schema
        card = state.pipeline.card
        openapi.complete(schema, state.settings, card.labels, {"name": card.name, "version": card.version})
        v2.complete_openapi(schema, card)
        return schema


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
            {"name": "v2", "description": "Open Inference Protocol (KServe v2): server metadata, health."},
            {
                "name": "v2 models",
                "description": "Open Inference Protocol (KServe v2): model metadata, readiness, infer "
                "(JSON or Triton's binary tensor data).",
            },
        ],
    )
    app.state.service = state = ServiceState(settings=settings, metrics=Metrics())
    install_error_handlers(app)
    install_docs(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(QuietStartupFailure)
    for module in (predict, attention, models, health, metrics, demo):
        app.include_router(module.router)
    app.include_router(v2.health)  # the Open Inference Protocol: GET /v2 and its health probes
    app.include_router(v2.models)  # /v2/models/...: metadata, readiness, infer
    return app


app = create_app()
