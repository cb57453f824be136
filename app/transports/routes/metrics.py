"""GET /metrics: Prometheus exposition (never behind an API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from app.runtime.metrics import Metrics

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Requests by route and status, latencies, images per request, queue depth, batches, inference."""
    registry = request.app.state.metrics
    assert isinstance(registry, Metrics)
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
