"""POST /attention-map: predictions plus a pixel-aligned heatmap of what the model used."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.deps import PipelineDep
from app.schemas import AttentionMapResponsePublic, BatchAttentionMapResponsePublic
from app.transports.routes.common import IMAGE_ERRORS, RESULTS_DESCRIPTION, reply_response

router = APIRouter(tags=["inference"])

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
    responses={200: {"description": RESULTS_DESCRIPTION}, **IMAGE_ERRORS},
    response_model=AttentionMapResponsePublic | BatchAttentionMapResponsePublic,
)
async def attention_map(request: Request, pipeline: PipelineDep) -> Response:
    """Predictions plus a heatmap of the evidence (or attention) behind the target class."""
    return reply_response(await pipeline.respond("attention-map", request.scope, request.receive))
