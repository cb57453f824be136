"""GET /metrics: Prometheus exposition (never behind an API key)."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from app.deps import StateDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(state: StateDep) -> Response:
    """Requests by route and status, latencies, images per request, queue depth, batches, inference."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
