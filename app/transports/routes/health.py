"""Liveness and readiness probes (never behind an API key)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request

from app.errors import ModelNotReady
from app.schemas import HealthPublic
from app.transports.routes.common import error_responses

if TYPE_CHECKING:  # set by the launcher (app.runtime.launcher); the routes do not depend on it
    from app.runtime.launcher import WorkerGroup

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=HealthPublic)
async def live() -> dict[str, str]:
    """200 while the process serves HTTP."""
    return {"status": "alive"}


@router.get("/ready", response_model=HealthPublic, responses=error_responses(503))
async def ready(request: Request) -> dict[str, str]:
    """200 once the model is loaded and warm in every worker; 503 before that and while shutting down."""
    state = request.app.state
    if state.draining:
        raise ModelNotReady("the service is shutting down", headers={"Retry-After": "1"})
    if not state.ready:
        raise ModelNotReady("the model is not ready", headers={"Retry-After": "1"})
    group: WorkerGroup | None = state.worker_group
    if group is not None and not group.all_listening():
        message = f"{group.listening} of {group.size} workers are ready"
        raise ModelNotReady(message, headers={"Retry-After": "1"})
    return {"status": "ready"}
