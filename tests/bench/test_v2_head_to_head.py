"""The v2 side-by-side's request: what tritonclient sends, and what Glimpse's codec reads as one image."""

from __future__ import annotations

from pathlib import Path

from app.transports.v2.codec import parse_infer_request
from bench.run import BENCH
from bench.v2_head_to_head import request_body


def test_the_benchmark_request_is_one_binary_image(tmp_path: Path) -> None:
    body, header_length = request_body(BENCH / "canvas60.png", tmp_path / "request.bin")
    request = parse_infer_request(body.read_bytes(), header_length)
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape, tensor.binary) == ("image", "BYTES", (1, 1), True)
    assert tensor.data == [(BENCH / "canvas60.png").read_bytes()]
    assert request.outputs is not None
    assert [(o.name, o.binary) for o in request.outputs] == [("probabilities", True), ("label", True)]
