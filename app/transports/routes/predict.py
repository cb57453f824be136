"""POST /predict: class probabilities for one or several images."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.deps import PipelineDep
from app.schemas import BatchPredictResponsePublic, PredictResponsePublic
from app.transports.routes.common import IMAGE_ERRORS, RESULTS_DESCRIPTION, reply_response

router = APIRouter(tags=["inference"])


@router.post(
    "/predict",
    summary="Classify images",
    responses={200: {"description": RESULTS_DESCRIPTION}, **IMAGE_ERRORS},
    response_model=PredictResponsePublic | BatchPredictResponsePublic,
)
async def predict(request: Request, pipeline: PipelineDep) -> Response:
    """The top_k classes of each image with their softmax probabilities, highest first.

    The request core reads the parameters, the key and the body (`app.pipeline.core`); the fast path
    sends it most requests directly, and this route the rest (see `app.transports.fast_path`).
    """
    return reply_response(await pipeline.respond("predict", request.scope, request.receive))
