"""The engine: its configuration from the settings, and the batcher driving the real model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import torch

from app.config import Settings
from app.engine.engine import EngineConfig, InferenceEngine
from app.errors import Overloaded, PayloadTooLarge
from app.runtime.metrics import Metrics
from models.checkpoint import DEFAULT_MODEL_DIR, load_model

pytestmark = pytest.mark.anyio


def make_engine(inline_max_seconds: float = 0.0, **settings: Any) -> InferenceEngine:
    model, card = load_model(DEFAULT_MODEL_DIR)
    config = EngineConfig.from_settings(Settings(_env_file=None, **settings), None)
    config = replace(config, batching=replace(config.batching, inline_max_seconds=inline_max_seconds))
    return InferenceEngine(
        model.fuse_for_inference(), card.preprocessing, torch.device("cpu"), config, Metrics()
    )


@pytest.fixture
async def engine() -> AsyncIterator[InferenceEngine]:
    engine = make_engine(max_batch_size=16, max_batch_delay_ms=1000.0)
    await engine.warm_up(channels=1, image_size=60, max_batch_size=16)
    engine.start()
    yield engine
    await engine.stop()


def random_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (h, w, 1), generator=generator, dtype=torch.uint8) for h, w in sizes]


def record_forward_threads(engine: InferenceEngine) -> list[str]:
    """The names of the threads that run each of the engine's forward passes from now on."""
    threads: list[str] = []
    run = engine.batcher.run

    def recording(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return run(*args)

    engine.batcher.run = recording
    return threads


def test_the_configuration_comes_from_the_settings_alone() -> None:
    settings = Settings(_env_file=None, max_batch_size=7, max_image_pixels=1000, max_batch_pixels=5000)
    config = EngineConfig.from_settings(settings, torch.bfloat16)
    assert (config.batching.max_batch_size, config.forward.max_batch_pixels) == (7, 5000)
    assert config.batching.max_inflight_cost == 4000  # default: four of the largest images
    assert config.forward.cuda_graphs is Settings(_env_file=None).cuda_graphs is True
    assert config.forward.amp_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="GLIMPSE_MAX_INFLIGHT_PIXELS"):
        Settings(_env_file=None, max_image_pixels=1000, max_inflight_pixels=999)


async def test_admitted_requests_share_forward_passes_and_get_their_own_answers(
    engine: InferenceEngine,
) -> None:
    images = random_images([(60, 60)] * 32)
    deadline = time.perf_counter() + 30
    admissions = [engine.admit([60 * 60], deadline) for _ in images]  # as requests do before decoding
    for admission in admissions:
        admission.__enter__()
    try:
        results = await asyncio.gather(
            *(
                admission.predict([image], 5, None)
                for admission, image in zip(admissions, images, strict=True)
            )
        )
    finally:
        for admission in admissions:
            admission.__exit__(None, None, None)
    assert engine.metrics.registry.get_sample_value("glimpse_batch_size_count") == 2  # 32 in batches of 16
    singles = [(await engine.predict([image], 5, None, deadline))[0] for image in images[:4]]
    assert [p.indices for (p,) in results[:4]] == [s.indices for s in singles]


async def test_the_warm_up_s_estimate_refuses_what_cannot_finish_before_the_deadline(
    engine: InferenceEngine,
) -> None:
    assert engine.batcher.seconds_per_cost > 0
    one_second = int(1 / engine.batcher.seconds_per_cost)  # pixels the warm-up says take about 1 s
    with pytest.raises(PayloadTooLarge, match="would take about"):
        engine.admit([one_second], time.perf_counter() + 0.3)
    with (
        engine.admit([one_second // 2], time.perf_counter() + 10),
        pytest.raises(Overloaded, match="work ahead"),
    ):
        engine.admit([one_second // 2], time.perf_counter() + 0.7)
    with engine.admit([60 * 60], time.perf_counter() + 10):
        pass


async def test_short_cpu_batches_run_on_the_event_loop_and_long_ones_in_the_inference_thread() -> None:
    engine = make_engine(inline_max_seconds=0.02, max_batch_size=16)
    await engine.warm_up(channels=1, image_size=60, max_batch_size=16)  # measures the cost per pixel
    engine.start()
    threads = record_forward_threads(engine)
    deadline = time.perf_counter() + 60
    # 3,600 pixels: about 0.5 ms on the 2-core development VM, far under the 20 ms an inline pass may
    # take; 2.4 million: about 0.2-0.7 s there, far over.
    await engine.predict(random_images([(60, 60)]), 1, None, deadline)
    await engine.predict(random_images([(1536, 1536)]), 1, None, deadline)
    await engine.stop()
    assert threads == [threading.current_thread().name, "glimpse-inference_0"]


def test_a_gpu_engine_never_runs_inline() -> None:
    config = EngineConfig.from_settings(Settings(_env_file=None), None)
    config = replace(config, batching=replace(config.batching, inline_max_seconds=0.02))
    model, card = load_model(DEFAULT_MODEL_DIR)
    engine = InferenceEngine(model, card.preprocessing, torch.device("meta"), config, Metrics())
    assert engine.batcher.policy.inline_max_seconds == 0.0
