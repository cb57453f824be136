"""The service's state, one typed object on ``app.state.service`` for every module that needs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette

from app.config import Settings
from app.pipeline.core import Pipeline
from app.runtime.metrics import Metrics


def _no_reason() -> str | None:
    return None


@dataclass(slots=True)
class ServiceState:
    """What the lifespan, the transports, the routes and the launcher share.

    Attributes:
        pipeline: The request core, once the model is loaded and warm; None before and after.
        ready: The lifespan finished starting and has not begun stopping.
        draining: SIGTERM arrived: /health/ready answers 503 while requests are still served.
        startup_failed: The lifespan failed and logged why (the traceback is then dropped).
        peers_not_ready: Set by a launcher of several workers: why not every worker serves yet, or
            None when they all do. /health/ready asks it; the routes know nothing of the launcher.
    """

    settings: Settings
    metrics: Metrics
    pipeline: Pipeline | None = None
    ready: bool = False
    draining: bool = False
    startup_failed: bool = False
    peers_not_ready: Callable[[], str | None] = field(default=_no_reason)

    def not_ready_reason(self) -> str | None:
        """Why /health/ready should answer 503, or None when the service is ready."""
        if self.draining:
            return "the service is shutting down"
        if not self.ready or self.pipeline is None:
            return "the model is not ready"
        return self.peers_not_ready()


def service_state(app: Starlette) -> ServiceState:
    state = app.state.service
    assert isinstance(state, ServiceState)
    return state
