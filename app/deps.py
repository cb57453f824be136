"""Typed dependencies: routes reach the service state, settings and the request core through these."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.errors import ModelNotReady
from app.pipeline.auth import check_api_key
from app.pipeline.core import Pipeline
from app.state import ServiceState, service_state


async def get_state(request: Request) -> ServiceState:
    return service_state(request.app)


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings_from_app(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_from_app)]


async def get_pipeline(state: StateDep) -> Pipeline:
    """The loaded, warmed-up request core; 503 with Retry-After before startup ends and after shutdown."""
    if not state.ready or state.pipeline is None:
        raise ModelNotReady("the model is not ready yet; retry shortly", headers={"Retry-After": "1"})
    return state.pipeline


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    """The API-key check of :mod:`app.pipeline.auth`, for the routes outside the request core."""
    check_api_key(tuple(key.encode() for key in settings.api_keys), request.scope["headers"])
