"""Faults: device out-of-memory during a batch, and broken model artifacts at start-up.

Out-of-memory is injected on the CPU: a wrapper model raises ``torch.cuda.OutOfMemoryError`` for batches
larger than it "has memory for", as a GPU would. Start-up faults start real uvicorn processes.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import Tensor, nn

from app.engine import EngineConfig, InferenceEngine, Prediction
from app.errors import Overloaded
from app.metrics import Metrics
from models.attention_net import AttentionNet, AttentionOutput
from models.checkpoint import DEFAULT_MODEL_DIR, load_model


class OutOfMemoryAbove(nn.Module):
    """The real model, but any forward pass over more than ``capacity`` images runs out of memory."""

    def __init__(self, model: AttentionNet, capacity: int) -> None:
        super().__init__()
        self.model = model
        self.capacity = capacity
        self.batch_sizes: list[int] = []

    def forward(self, x: Tensor, input_size: Tensor | None = None) -> AttentionOutput:
        self.batch_sizes.append(int(x.shape[0]))
        if x.shape[0] > self.capacity:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        output: AttentionOutput = self.model(x, input_size)
        return output


def oom_engine(capacity: int) -> tuple[InferenceEngine, OutOfMemoryAbove]:
    model, _ = load_model(DEFAULT_MODEL_DIR)
    fake = OutOfMemoryAbove(model.fuse_for_inference(), capacity)
    config = EngineConfig(max_batch_size=8, max_batch_delay_ms=50.0)
    engine = InferenceEngine(fake, torch.device("cpu"), config, Metrics())  # type: ignore[arg-type]
    return engine, fake


def images(count: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(1, 60, 60, generator=generator) for _ in range(count)]


@pytest.mark.anyio
async def test_out_of_memory_batch_is_retried_in_halves() -> None:
    engine, fake = oom_engine(capacity=2)
    engine.start()
    try:
        batch = images(8)
        results = await engine.predict(batch, top_k=3, map_request=None, deadline=time.perf_counter() + 30)
        fake.capacity = 8
        alone = [(await engine.predict([image], 3, None, time.perf_counter() + 30))[0] for image in batch]
    finally:
        await engine.stop()
    assert fake.batch_sizes[:7] == [8, 4, 2, 2, 4, 2, 2]
    assert all(isinstance(result, Prediction) for result in results)
    assert [r.indices for r in results] == [a.indices for a in alone]


@pytest.mark.anyio
async def test_image_that_never_fits_gets_503_and_the_worker_survives() -> None:
    engine, fake = oom_engine(capacity=0)
    engine.start()
    try:
        with pytest.raises(Overloaded) as refused:
            await engine.predict(images(3), top_k=1, map_request=None, deadline=time.perf_counter() + 30)
        assert refused.value.headers == {"Retry-After": "1"}
        assert fake.batch_sizes == [3, 1, 2, 1, 1]
        fake.capacity = 8
        (later,) = await engine.predict(images(1), 1, None, time.perf_counter() + 30)
    finally:
        await engine.stop()
    assert isinstance(later, Prediction)


def test_images_being_decoded_count_against_the_queue() -> None:
    """A burst is refused on arrival, before its images are decoded, once queued + decoding is full."""
    engine, _ = oom_engine(capacity=8)
    engine.config = EngineConfig(max_queue_size=3)
    with engine.expecting(2):
        with pytest.raises(Overloaded), engine.expecting(2):
            pass
        with engine.expecting(1):
            assert engine._incoming == 3
    assert engine._incoming == 0
