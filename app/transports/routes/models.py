"""GET /models: what the served model is, what it accepts and how it was evaluated."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.deps import PipelineDep, require_api_key
from app.schemas import InputSpecPublic, ModelInfoPublic, RuntimePublic
from app.transports.routes.common import error_responses

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", response_model=ModelInfoPublic, responses=error_responses(401, 503))
async def models(pipeline: PipelineDep) -> ModelInfoPublic:
    """Name, version, labels, input specification and evaluation metrics of the served model."""
    card = pipeline.card
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
            polarity=spec.polarity,
            min_size=pipeline.limits.min_image_size,
            max_pixels=pipeline.limits.max_image_pixels,
            feature_stride=card.config.feature_stride,
        ),
        runtime=RuntimePublic(device=str(pipeline.engine.device), precision=pipeline.engine.precision),
        evaluation=card.evaluation,
        domain={key: value for key, value in card.domain.items() if key not in ("file", "sha256")}
        if card.domain
        else None,
    )
