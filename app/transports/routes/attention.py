"""POST /attention-map: predictions plus a pixel-aligned heatmap of what the model used."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from app.deps import PredictorDep, SettingsDep, require_api_key
from app.engine.forward import MapKind
from app.pipeline.imaging import Colormap
from app.pipeline.predictor import MapOptions
from app.pipeline.uploads import read_upload
from app.schemas import AttentionMapResponsePublic, BatchAttentionMapResponsePublic
from app.transports.routes.common import IMAGE_ERRORS, IMAGE_REQUEST_BODY, json_response
from app.transports.routes.predict import TopK

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])

DESCRIPTION = """
Where the model looked, from the **same forward pass** as the prediction (no gradients, no extra pass).

The network computes features F_ij on a grid (one cell per `grid_stride` input pixels), attention
weights A_ij (a softmax over the grid, summing to 1) and classifies the pooled vector Σ A_ij·F_ij with a
linear layer, so every class logit decomposes exactly over positions: logit_c = Σ_ij A_ij·(w_c·F_ij) + b_c.

* `kind=evidence` (default): the map is **A_ij·(w_c·F_ij)** for the target class c — the additive
  contribution of position (i, j) to that class's logit — and the heatmap shows its **positive part**
  (evidence *for* c). It changes with `target`.
* `kind=attention`: the map is the raw attention **A_ij** — where the model pooled from, for every
  class alike; `target` is reported but does not change it.

The grid map is resampled bilinearly onto the input's pixels, pixel-aligned (cell (i, j) is centred on
input pixel (stride·i, stride·j)), and scaled so **255 is the map's maximum** (all zero when it has no
positive value). `heatmap` is a base64 8-bit grayscale PNG of exactly the input's width×height;
`overlay=true` adds an RGB PNG of the `colormap` blended at 50 % over the input; `include_grid=true` adds
the raw grid values (evidence signed, before taking the positive part).
"""


@router.post(
    "/attention-map",
    summary="Explain predictions with an attention heatmap",
    description=DESCRIPTION,
    openapi_extra=IMAGE_REQUEST_BODY,
    responses={
        200: {
            "description": 'One image: the single response. Several: `{"results": [...]}` in request order.'
        },
        **IMAGE_ERRORS,
    },
    response_model=AttentionMapResponsePublic | BatchAttentionMapResponsePublic,
)
async def attention_map(
    request: Request,
    predictor: PredictorDep,
    settings: SettingsDep,
    top_k: TopK = 5,
    target: Annotated[str | None, Query(description="Label to explain; default the top class.")] = None,
    kind: Annotated[
        MapKind, Query(description="`evidence` for the target class, or raw `attention`.")
    ] = "evidence",
    overlay: Annotated[bool, Query(description="Also return the heatmap blended over the input.")] = False,
    colormap: Annotated[Colormap, Query(description="Colormap of the overlay.")] = "turbo",
    include_grid: Annotated[
        bool, Query(description="Also return the raw feature-grid map as numbers.")
    ] = False,
) -> Response:
    """Predictions plus a heatmap of the evidence (or attention) behind the target class."""
    options = MapOptions(kind, predictor.target_index(target), colormap if overlay else None, include_grid)
    predictor.check_top_k(top_k)
    upload = await read_upload(request, settings.max_body_bytes, settings.max_images_per_request)
    predictor.engine.metrics.observe_images("/attention-map", len(upload.images))
    results = await predictor.attention_maps(upload.images, top_k, options)
    return json_response({"results": results} if upload.several else results[0])
