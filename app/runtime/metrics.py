"""Prometheus metrics: one registry per app, and a pure-ASGI middleware counting every request."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The service's metrics, in a registry of their own so several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "glimpse_requests", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "glimpse_request_duration_seconds", "HTTP request latency, first byte in to last byte out.",
            ["route"], buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.images_per_request = Histogram(
            "glimpse_images_per_request", "Images in each accepted request.",
            ["route"], buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "glimpse_queue_depth", "Images waiting for the model.", registry=self.registry
        )
        self.batch_size = Histogram(
            "glimpse_batch_size", "Images per forward pass.", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.inference_seconds = Histogram(
            "glimpse_inference_duration_seconds", "Time of one batched forward pass, padding included.",
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.queue_wait_seconds = Histogram(
            "glimpse_queue_wait_seconds", "Time an image waits in the queue before its forward pass.",
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip

        # Each label set's children, looked up once: ``labels()`` costs about as much as the update.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._images_children: dict[str, Histogram] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency under its route template."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_images(self, route: str, count: int) -> None:
        """Record how many images an accepted request carried."""
        child = self._images_children.get(route)
        if child is None:
            child = self._images_children[route] = self.images_per_request.labels(route)
        child.observe(count)


class MetricsMiddleware:
    """Counts requests and times them by route template (never the raw path, which clients control)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            if not scope.get("glimpse.counted"):  # else the request core counted it (app.pipeline.core)
                route = scope.get("route")
                template = route.path if isinstance(route, Route) else "unmatched"
                seconds = time.perf_counter() - started
                self.metrics.observe_request(template, scope["method"], status, seconds)
