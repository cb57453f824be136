"""Liveness and readiness probes (never behind an API key)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import StateDep
from app.errors import ModelNotReady
from app.schemas import HealthPublic
from app.transports.routes.common import error_responses

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=HealthPublic)
async def live() -> dict[str, str]:
    """200 while the process serves HTTP."""
    return {"status": "alive"}


@router.get("/ready", response_model=HealthPublic, responses=error_responses(503))
async def ready(state: StateDep) -> dict[str, str]:
    """200 once the model is loaded and warm in every worker; 503 before that and while shutting down."""
    reason = state.not_ready_reason()
    if reason is not None:
        raise ModelNotReady(reason, headers={"Retry-After": "1"})
    return {"status": "ready"}
