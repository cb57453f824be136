"""Typed dependencies: routes reach settings and the predictor through these, never globals."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.config import Settings
from app.errors import ModelNotReady, Unauthorized
from app.pipeline.predictor import Predictor

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Required when GLIMPSE_API_KEYS is set."
)


async def get_settings_from_app(request: Request) -> Settings:
    settings = request.app.state.settings
    assert isinstance(settings, Settings)
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_from_app)]


async def get_predictor(request: Request) -> Predictor:
    """The loaded, warmed-up predictor; 503 with Retry-After before startup ends and during shutdown."""
    predictor = request.app.state.predictor
    if not request.app.state.ready or predictor is None:
        raise ModelNotReady("the model is not ready yet; retry shortly", headers={"Retry-After": "1"})
    assert isinstance(predictor, Predictor)
    return predictor


PredictorDep = Annotated[Predictor, Depends(get_predictor)]


async def require_api_key(
    settings: SettingsDep, api_key: Annotated[str | None, Security(api_key_header)], request: Request
) -> None:
    """Accept ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` when keys are configured."""
    if not settings.api_keys:
        return
    if api_key is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        api_key = token.strip() if scheme.lower() == "bearer" else None
    if api_key is None:
        raise Unauthorized(
            "missing API key: send an X-API-Key header", headers={"WWW-Authenticate": "ApiKey"}
        )
    presented = api_key.encode()
    matched = False
    for key in settings.api_keys:  # compare against every key so timing does not tell which one matched
        matched |= hmac.compare_digest(presented, key.encode())
    if not matched:
        raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "ApiKey"})
