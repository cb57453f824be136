"""Property-based fuzzing: the whole HTTP surface from its OpenAPI spec, and the image decoder.

* schemathesis generates requests for every operation of ``/openapi.json`` (valid and invalid
  parameters and bodies) against the real session server, and every answer must pass every one of
  its checks: no 5xx, documented statuses, content types, headers and schemas, every schema-valid
  request accepted (positive data acceptance) and every schema-invalid one refused with a 4xx,
  authentication not ignored, unsupported methods refused.
* hypothesis feeds the decoder (:func:`app.pipeline.imaging.open_image`, then ``convert_image``)
  random bytes and mutated real images (truncated, bytes flipped, header fields overwritten): it
  returns a valid model input or raises a 4xx domain error — never anything else.

Bounded for the default suite (a few hundred cases, well under a minute); raise ``FUZZ_EXAMPLES`` for a
longer run: ``FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/hardening/test_fuzz.py``.
"""

from __future__ import annotations

import base64
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
from schemathesis.config import SchemathesisConfig

from app.errors import GlimpseError
from app.pipeline.imaging import ALLOWED_FORMATS, convert_image, open_image
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


@st.composite
def image_files(draw: st.DrawFn) -> bytes:
    """A real image file the service accepts: an allowed format and mode, sides from 16 to 64 pixels."""
    height, width = draw(st.integers(MIN_SIZE, 64)), draw(st.integers(MIN_SIZE, 64))
    seed = draw(st.integers(0, 2**32 - 1))
    array = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    fmt = draw(st.sampled_from(ALLOWED_FORMATS))
    return _encoded(array, draw(st.sampled_from(MODES[fmt])), fmt)


# The document declares the images as `format: binary` (multipart) and `format: byte` (base64 in JSON)
# with what makes a file acceptable in their description; schemathesis cannot know that, so its
# positive data for those formats are real image files (for positive_data_acceptance), and the
# negative data are what it makes of the rest of the schema.
schemathesis.openapi.format("binary", image_files())
schemathesis.openapi.format("byte", image_files().map(lambda data: base64.b64encode(data).decode()))


# Every check, at its defaults but one: schemathesis's list of statuses that reject schema-invalid data,
# plus 413, which the service answers (as documented for each image route) for more images than
# `maxItems` allows.
REJECTION_STATUSES = [
    "400",
    "401",
    "403",
    "404",
    "405",
    "406",
    "409",
    "413",
    "415",
    "422",
    "428",
    "429",
    "5xx",
]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTION_STATUSES}}}
)


# schemathesis.pytest.from_fixture fails under pytest 9 (no Function._nodeid), so each operation's
# hypothesis strategy is driven here directly, for valid and invalid data.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_http_surface_passes_every_check(server: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json", config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    operations = [op for op in operations if not op.path.startswith("/v2")]  # tests/hardening/test_v2.py
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
            case.validate_response(response, headers={"X-API-Key": E2E_API_KEY})
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
        decoded = convert_image(open_image(data, MAX_PIXELS, MIN_SIZE), SPEC, keep_rgb=True)
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
