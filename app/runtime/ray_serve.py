"""Glimpse on Ray Serve: every replica runs the whole app, as one ``python -m app.serve`` worker would.

``serve run deploy/ray/serve-config.yaml`` (or the KubeRay ``RayService`` in ``deploy/ray/``) imports
:data:`app` from here. Ray Serve's HTTP proxy hands each request's ASGI scope to a replica, and the
replica calls the app built by :func:`build_app` — a :class:`app.main.GlimpseAPI`, so the raw-ASGI hot
path, the FastAPI routes, the request core, the batching engine and ``/metrics`` are the standalone
service's own. Serve runs the app's lifespan when the replica starts (uvicorn's ``LifespanOn``), so a
replica loads, verifies and warms the model and starts its batcher before it takes traffic, and stops
them when Serve retires it. ``check_health`` reports the lifespan's readiness to Serve's controller,
which replaces a replica that fails it.

Replica count, autoscaling and resources (CPUs, or a fraction of a GPU) come from the Serve config;
``docs/deploy-ray.md`` explains the knobs. Needs the ``ray`` extra: ``pip install '.[ray]'``.
"""

from __future__ import annotations

import math
import os

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Deployment
from ray.serve._private.constants import SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import Settings
from app.main import create_app
from app.state import service_state


def replica_settings() -> Settings:
    """Settings from ``GLIMPSE_*`` variables, with the thread counts sized to this replica's CPUs.

    Ray does not pin a replica to its cores, and an app left alone takes every core of the node for its
    threads: eight replicas on one node would each run as many threads as the node has cores. A replica
    holding C of the node's N cores is therefore sized as one of N // C ``app.serve`` workers
    (``WEB_CONCURRENCY``), which gives it C threads, and on one core the inline forward path, exactly as
    the standalone service with that many workers. An operator's own ``WEB_CONCURRENCY`` or thread
    settings still win.
    """
    if not ray.is_initialized():  # built outside a replica (a test, a tool): nothing to size it by
        return Settings()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)  # type: ignore[no-untyped-call]
    if cpus <= 0 or "WEB_CONCURRENCY" in os.environ:
        return Settings()
    node_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Settings(WEB_CONCURRENCY=max(1, node_cores // max(1, math.ceil(cpus))))


def build_app() -> FastAPI:
    """The replica's app; Serve calls this in the replica, never in the driver that deploys it."""
    return create_app(replica_settings())


class DisconnectsLeftToTheApp:
    """Marks every HTTP request with Serve's ``x-request-disconnect-disabled: ?1``.

    Without it a replica's ingress runs each request as two extra asyncio tasks, one of them reading the
    body to watch for the client going away so that Serve can cancel the call: some 40 µs per request on
    the replica's event loop (bench/results/ab-ray-ingress). Glimpse does not need it: the batching engine
    bounds every request by its own deadline, and the standalone service (uvicorn) runs a request to its
    end as well. Installed by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` (see
    :func:`ingress_middlewares`), which wraps Serve's HTTP servers, the replicas' included.
    """

    HEADER = (SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER.encode(), b"?1")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["headers"] = [*scope["headers"], self.HEADER]
        await self.app(scope, receive, send)


def ingress_middlewares() -> list[Middleware]:
    """Serve's HTTP callback: ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names this function."""
    return [Middleware(DisconnectsLeftToTheApp)]


class Replica:
    """One replica: the Glimpse app with its own model, batcher and metrics."""

    app: FastAPI  # set by the ingress wrapper

    async def check_health(self) -> None:
        """Serve's controller calls this periodically; a replica whose model is not serving is replaced."""
        state = service_state(self.app)
        if not state.ready or state.pipeline is None:
            raise RuntimeError("the Glimpse app is not ready (model loading, or stopped)")


# The Serve config's fields override these defaults; the options are Serve's, the name is the one the
# configs in deploy/ray/ refer to.
Glimpse: Deployment = serve.deployment(name="glimpse", max_ongoing_requests=64, health_check_period_s=5)(
    serve.ingress(build_app)(Replica)
)
app = Glimpse.bind()
