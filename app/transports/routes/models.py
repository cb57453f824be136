"""GET /models: what the served model is, what it accepts and how it was evaluated."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.deps import PredictorDep, require_api_key
from app.schemas import InputSpecPublic, ModelInfoPublic, RuntimePublic
from app.transports.routes.common import error_responses

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", response_model=ModelInfoPublic, responses=error_responses(401, 503))
async def models(predictor: PredictorDep) -> ModelInfoPublic:
    """Name, version, labels, input specification and evaluation metrics of the served model."""
    card = predictor.card
    spec = card.preprocessing
    return ModelInfoPublic(
        name=card.name,
        version=card.version,
        labels=card.labels,
        num_classes=len(card.labels),
        input=InputSpecPublic(
            color_mode=spec.color_mode,
            channels=spec.channels,
            mean=list(spec.mean),
            std=list(spec.std),
            size_policy=spec.size_policy,
            min_size=predictor.limits.min_image_size,
            max_pixels=predictor.limits.max_image_pixels,
            feature_stride=card.config.feature_stride,
        ),
        runtime=RuntimePublic(device=str(predictor.engine.device), precision=predictor.engine.precision),
        evaluation=card.evaluation,
    )
