"""POST /predict: class probabilities for one or several images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from app.deps import PredictorDep, SettingsDep, require_api_key
from app.pipeline.uploads import read_upload
from app.schemas import BatchPredictResponsePublic, PredictResponsePublic
from app.transports.routes.common import IMAGE_ERRORS, IMAGE_REQUEST_BODY, json_response

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])

TopK = Annotated[int, Query(ge=1, description="How many classes to return (1 … number of classes).")]


@router.post(
    "/predict",
    summary="Classify images",
    openapi_extra=IMAGE_REQUEST_BODY,
    responses={
        200: {
            "description": 'One image: the single response. Several: `{"results": [...]}` in request order.'
        },
        **IMAGE_ERRORS,
    },
    response_model=PredictResponsePublic | BatchPredictResponsePublic,
)
async def predict(
    request: Request, predictor: PredictorDep, settings: SettingsDep, top_k: TopK = 5
) -> Response:
    """The top_k classes of each image with their softmax probabilities, highest first."""
    predictor.check_top_k(top_k)
    upload = await read_upload(request, settings.max_body_bytes, settings.max_images_per_request)
    predictor.engine.metrics.observe_images("/predict", len(upload.images))
    results = await predictor.predict(upload.images, top_k)
    return json_response({"results": results} if upload.several else results[0])
