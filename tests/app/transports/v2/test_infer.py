"""Which paths the fast path takes as v2 infer requests (the rest go to FastAPI's routes)."""

from __future__ import annotations

import pytest

from app.transports.v2.infer import infer_path


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v2/models/m/infer", ("m", None)),
        ("/v2/models/m/versions/1.1.0/infer", ("m", "1.1.0")),
        ("/v2/models/m", None),
        ("/v2/models/m/ready", None),
        ("/v2/models/m/versions/1/ready", None),
        ("/v2/models/m/other/1/infer", None),
        ("/v2/models/m/versions/1/extra/infer", None),
        ("/v1/models/m/infer", None),
        ("/predict", None),
    ],
)
def test_infer_paths(path: str, model: tuple[str, str | None] | None) -> None:
    assert infer_path(path) == model
