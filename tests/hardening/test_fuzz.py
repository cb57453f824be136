"""Property-based fuzzing: the whole HTTP surface from its OpenAPI spec, and the image decoder.

* schemathesis generates requests for every operation of ``/openapi.json`` (valid and invalid
  parameters and bodies) against the real session server: none may answer 5xx.
* hypothesis feeds :func:`app.pipeline.imaging.decode_image` random bytes and mutated real images (truncated,
  bytes flipped, header fields overwritten): it returns a valid model input or raises a 4xx domain
  error — never anything else.

Bounded for the default suite (a few hundred cases, well under a minute); raise ``FUZZ_EXAMPLES`` for a
longer run: ``FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/test_hardening_fuzz.py``.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from typing import Any

import numpy as np
import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from app.errors import GlimpseError
from app.pipeline.imaging import ALLOWED_FORMATS, decode_image
from models.checkpoint import DEFAULT_MODEL_DIR, read_card
from tests.helpers import E2E_API_KEY

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
SPEC = read_card(DEFAULT_MODEL_DIR).preprocessing
MAX_PIXELS, MIN_SIZE = 256 * 256, 16
CASES: Counter[str] = Counter()
MODES = {  # the modes each format can store
    "PNG": ["L", "LA", "RGB", "RGBA", "P", "1", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "WEBP": ["RGB", "RGBA"],
    "BMP": ["L", "RGB", "P", "1"],
    "GIF": ["L", "P"],
    "TIFF": ["L", "RGB", "RGBA", "CMYK", "P", "1", "I", "F"],
}


# schemathesis.pytest.from_fixture fails under pytest 9 (no Function._nodeid), so each operation's
# hypothesis strategy is driven here directly, for valid and invalid data.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_http_surface_never_answers_5xx(server: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == 6

    for operation in operations:
        # No shrinking: each step is an HTTP request, and a failing example is readable as generated.
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        @given(case=operation.as_strategy(mode))
        def call(case: schemathesis.Case[Any]) -> None:
            CASES[f"{mode.value} {case.method} {case.path}"] += 1
            response = case.call(base_url=server, headers={"X-API-Key": E2E_API_KEY}, timeout=30)
            case.validate_response(response, checks=[not_a_server_error])
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}, response.text

        try:
            call()
        except Unsatisfiable:  # no invalid request exists for an operation without parameters
            assert mode is GenerationMode.NEGATIVE


def _encoded(array: np.ndarray, mode: str, fmt: str) -> bytes:
    image = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A real image in an allowed format and mode, then truncated, flipped or overwritten."""
    height = draw(st.integers(8, 80))
    width = draw(st.integers(8, 80))
    seed = draw(st.integers(0, 2**32 - 1))
    array = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    fmt = draw(st.sampled_from(ALLOWED_FORMATS))
    mode = draw(st.sampled_from(MODES[fmt]))
    data = bytearray(_encoded(array, mode, fmt))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["truncate", "flip", "overwrite"]))
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        if action == "truncate":
            del data[position:]
        elif action == "flip":
            data[position] ^= draw(st.integers(1, 255))
        else:
            data[position : position + 4] = draw(st.binary(min_size=4, max_size=4))
    return bytes(data)


def _check_decode(data: bytes) -> None:
    refusal: GlimpseError | None
    try:
        decoded = decode_image(data, SPEC, max_pixels=MAX_PIXELS, min_size=MIN_SIZE, keep_rgb=True)
    except GlimpseError as error:
        refusal = error
    else:
        refusal = None
    if refusal is not None:
        assert 400 <= refusal.status_code < 500, refusal
        CASES[f"decode → {refusal.code}"] += 1
        return
    CASES["decode → ok"] += 1
    assert decoded.pixels.shape == (decoded.height, decoded.width, 1)
    assert decoded.pixels.dtype == torch.uint8
    assert min(decoded.height, decoded.width) >= MIN_SIZE
    assert decoded.height * decoded.width <= MAX_PIXELS
    assert decoded.rgb is not None
    assert decoded.rgb.shape == (decoded.height, decoded.width, 3)


# Pillow warns (and the suite turns warnings into errors) about corrupt EXIF and other odd headers it
# then handles; a warning is not a failure of the decoder.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=EXAMPLES * 5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_images())
def test_decoder_survives_mutated_images(data: bytes) -> None:
    _check_decode(data)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.sampled_from(
            [b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff", b"BM", b"II*\0", b"MM\0*", b"RIFF"]
        ).flatmap(lambda magic: st.binary(max_size=512).map(lambda rest: magic + rest)),
    )
)
def test_decoder_survives_random_bytes(data: bytes) -> None:
    _check_decode(data)


def test_report_fuzz_counts() -> None:
    """Prints how many cases each fuzz test ran (run with -s); docs/reliability.md quotes a run of it."""
    print(dict(sorted(CASES.items())), "total", sum(CASES.values()))
