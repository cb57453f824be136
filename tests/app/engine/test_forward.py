"""The dynamic batcher: grouping, padded == single numerics, batching, back-pressure and deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import torch

from app.engine.forward import EngineConfig, InferenceEngine, MapKind, MapRequest, plan_groups, rank_classes
from app.errors import DeadlineExceeded, Overloaded
from app.pipeline.imaging import render_heatmaps
from app.runtime.metrics import Metrics
from models.attention_net import channels_last
from models.checkpoint import DEFAULT_MODEL_DIR, load_model
from models.packing import PackedConv2d, can_pack

pytestmark = pytest.mark.anyio


def make_engine(**config: object) -> InferenceEngine:
    model, card = load_model(DEFAULT_MODEL_DIR)
    config_ = EngineConfig(**config)  # type: ignore[arg-type]
    return InferenceEngine(
        model.fuse_for_inference(), card.preprocessing, torch.device("cpu"), config_, Metrics()
    )


@pytest.fixture(params=["inference-thread", "event-loop"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[InferenceEngine]:
    """A started engine; warmed up, it runs short CPU batches on the event loop, else in its thread."""
    engine = make_engine(max_batch_size=16, max_batch_delay_ms=20.0)
    if request.param == "event-loop":
        await engine.warm_up(channels=1, image_size=60, max_batch_size=16)
    engine.start()
    yield engine
    await engine.stop()


def record_forward_threads(engine: InferenceEngine) -> list[str]:
    """The names of the threads that run each of the engine's forward passes from now on."""
    threads: list[str] = []
    forward_batch = engine.forward_batch

    def recording(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return forward_batch(*args)

    engine.forward_batch = recording  # type: ignore[method-assign,assignment]
    return threads


def test_plan_groups_keeps_sizes_together_and_splits_wasteful_padding() -> None:
    sizes = [(60, 60), (60, 60), (62, 61), (200, 200), (60, 60)]
    groups = plan_groups(sizes, max_batch_pixels=1 << 30)
    assert sorted(map(sorted, groups)) == [[0, 1, 2, 4], [3]]
    assert plan_groups([(100, 100)] * 4, max_batch_pixels=20_000) == [[0, 1], [2, 3]]


def random_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (h, w, 1), generator=generator, dtype=torch.uint8) for h, w in sizes]


async def test_mixed_size_batch_equals_single_image_runs(engine: InferenceEngine) -> None:
    # Odd sides padded to even ones: the first convolution reads the padding, which must be zero.
    sizes = [(60, 60), (48, 72), (64, 40), (33, 57), (60, 60), (57, 61), (61, 59)]
    images = random_images(sizes)
    request = MapRequest("evidence", target=3)
    deadline = time.perf_counter() + 30
    batched = await engine.predict(images, top_k=10, map_request=request, deadline=deadline)
    for image, together in zip(images, batched, strict=True):
        (alone,) = await engine.predict([image], top_k=10, map_request=request, deadline=deadline)
        assert together.indices == alone.indices
        assert together.scores == pytest.approx(alone.scores, abs=1e-5)
        assert together.grid is not None
        assert alone.grid is not None
        assert (
            together.grid.shape == alone.grid.shape == ((image.shape[0] + 3) // 4, (image.shape[1] + 3) // 4)
        )
        assert torch.allclose(together.grid, alone.grid, atol=1e-5)
    assert engine.metrics.registry.get_sample_value("glimpse_batch_size_count")  # the batch was observed


async def test_heat_images_of_a_mixed_batch_render_each_image_s_own_map(engine: InferenceEngine) -> None:
    """Maps of several sizes and both kinds, beside an image that asked for none, rendered per size group
    on the device: each heat image is its own grid resampled onto its own pixels."""
    sizes = [(60, 60), (48, 72), (60, 60), (33, 57), (60, 60)]
    images = random_images(sizes, seed=2)
    requests = [
        MapRequest("evidence"),
        MapRequest("attention", 4),
        MapRequest("evidence", 7),  # the same size as the first: a swap within the group would show
        MapRequest("evidence", 1),
        None,
    ]
    deadline = time.perf_counter() + 30
    pairs = zip(images, requests, strict=True)
    jobs = [engine.predict([image], 3, request, deadline) for image, request in pairs]
    with engine.expecting(len(images)):  # one batch
        results = await asyncio.gather(*jobs)
    assert engine.metrics.registry.get_sample_value("glimpse_batch_size_sum") == len(images)
    for (height, width), request, (prediction,) in zip(sizes, requests, results, strict=True):
        if request is None:
            assert prediction.grid is None
            assert prediction.heat is None
            continue
        assert prediction.grid is not None
        assert prediction.heat is not None
        expected = render_heatmaps(prediction.grid.unsqueeze(0), height, width, 4)[0].numpy()
        assert prediction.heat.shape == (height, width)
        assert np.array_equal(prediction.heat, expected)
        assert prediction.target == (request.target if request.target is not None else prediction.indices[0])
        if request.kind == "attention":
            assert float(prediction.grid.sum()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("kind", ["evidence", "attention"])
def test_a_same_size_batch_answers_as_the_padded_path(kind: MapKind) -> None:
    """Same-size batches wanting one kind of map run as one unit of device work (the one CUDA graphs
    record); with a smaller image beside them, the same images take the general, padded path."""
    engine = make_engine()
    images = random_images([(60, 60)] * 4, seed=5)
    requests = [MapRequest(kind), None, MapRequest(kind, target=2), MapRequest(kind)]
    same_size = engine.forward_batch(images, [10, 3, 1, 10], requests)
    padded = engine.forward_batch([*images, *random_images([(57, 50)])], [10, 3, 1, 10, 1], [*requests, None])
    for request, fast, general in zip(requests, same_size, padded[:4], strict=True):
        assert fast.indices == general.indices
        assert fast.scores == pytest.approx(general.scores, abs=1e-5)
        assert len(fast.indices) == len(fast.scores)
        assert fast.target == general.target
        if request is None:
            assert fast.grid is None
            assert fast.heat is None
            continue
        assert fast.target == (request.target if request.target is not None else fast.indices[0])
        assert fast.grid is not None
        assert general.grid is not None
        assert fast.grid.shape == general.grid.shape == (15, 15)
        assert torch.allclose(fast.grid, general.grid, atol=1e-5)
        assert fast.heat is not None
        assert general.heat is not None
        assert np.abs(fast.heat.astype(int) - general.heat.astype(int)).max() <= 1
    assert [len(p.indices) for p in same_size] == [10, 3, 1, 10]


def test_ties_rank_in_class_order() -> None:
    scores, indices = rank_classes(torch.tensor([[0.0, 2.0, 0.0, 2.0, -1.0]]))
    assert indices.tolist() == [[1, 3, 0, 2, 4]]
    assert scores.sum().item() == pytest.approx(1.0)


@pytest.mark.bfloat16
@pytest.mark.skipif(not can_pack(), reason="this PyTorch build has no oneDNN fused convolution")
def test_a_bfloat16_cpu_engine_packs_its_convolutions_with_bitwise_the_same_answers() -> None:
    engine = make_engine(amp_dtype=torch.bfloat16)
    packed = [m for m in engine.model.modules() if isinstance(m, PackedConv2d)]
    assert {m.dtype for m in packed} == {torch.bfloat16}
    assert not any(isinstance(m, torch.nn.Conv2d) for m in engine.model.modules())
    assert engine.model.classifier.weight.dtype == torch.float32  # the evidence maps read it
    reference = make_engine(amp_dtype=torch.bfloat16)
    fresh, _ = load_model(DEFAULT_MODEL_DIR)
    reference.model = channels_last(fresh.fuse_for_inference())  # float32 weights, cast per call
    images = random_images([(60, 60), (60, 60), (48, 72), (33, 57)], seed=3)
    maps = [MapRequest("evidence"), MapRequest("attention", target=2), None, MapRequest("evidence", 7)]
    answers = engine.forward_batch(images, [10] * 4, maps)
    for got, expected in zip(answers, reference.forward_batch(images, [10] * 4, maps), strict=True):
        assert (got.indices, got.scores, got.target) == (expected.indices, expected.scores, expected.target)
        assert (got.grid is None) == (expected.grid is None)
        if got.grid is not None and expected.grid is not None:
            assert torch.equal(got.grid, expected.grid)
            assert np.array_equal(got.heat, expected.heat)  # type: ignore[arg-type]


def test_without_onednn_a_bfloat16_cpu_engine_stores_its_convolutions_in_bfloat16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("models.packing.can_pack", lambda: False)
    engine = make_engine(amp_dtype=torch.bfloat16)
    assert not any(isinstance(m, PackedConv2d) for m in engine.model.modules())
    conv_dtypes = {m.weight.dtype for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert conv_dtypes == {torch.bfloat16}
    (answer,) = engine.forward_batch(random_images([(60, 60)], seed=7), [3], [None])
    assert len(answer.indices) == 3


@pytest.mark.skipif(not can_pack(), reason="this PyTorch build has no oneDNN fused convolution")
def test_a_float32_cpu_engine_packs_its_convolutions_with_the_same_answers_to_float_tolerance() -> None:
    engine = make_engine()
    assert {m.dtype for m in engine.model.modules() if isinstance(m, PackedConv2d)} == {torch.float32}
    reference = make_engine()
    fresh, _ = load_model(DEFAULT_MODEL_DIR)
    reference.model = channels_last(fresh.fuse_for_inference())
    images = random_images([(60, 60), (100, 100), (48, 72)], seed=5)
    maps = [MapRequest("evidence"), None, MapRequest("attention")]
    answers = engine.forward_batch(images, [10] * 3, maps)
    for got, expected in zip(answers, reference.forward_batch(images, [10] * 3, maps), strict=True):
        assert got.indices == expected.indices
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)
        if got.grid is not None and expected.grid is not None:
            torch.testing.assert_close(got.grid, expected.grid, atol=1e-5, rtol=1e-4)


@pytest.mark.bfloat16
async def test_bfloat16_mixed_size_batch_equals_single_image_runs() -> None:
    """Under CPU autocast (GLIMPSE_AMP_DTYPE=bfloat16) padding still changes no answer."""
    engine = make_engine(max_batch_size=16, max_batch_delay_ms=20.0, amp_dtype=torch.bfloat16)
    engine.start()
    images = random_images([(60, 60), (48, 72), (64, 40), (33, 57), (60, 60), (57, 61), (61, 59)], seed=1)
    request = MapRequest("evidence", target=3)
    deadline = time.perf_counter() + 30
    batched = await engine.predict(images, top_k=10, map_request=request, deadline=deadline)
    for image, together in zip(images, batched, strict=True):
        (alone,) = await engine.predict([image], top_k=10, map_request=request, deadline=deadline)
        assert together.indices[0] == alone.indices[0]
        assert together.scores == pytest.approx(alone.scores, abs=1e-3)  # bf16 keeps 8 bits of mantissa
        assert together.grid is not None
        assert alone.grid is not None
        assert torch.allclose(together.grid, alone.grid, atol=1e-2 * float(alone.grid.abs().max()))
    assert engine.precision == "bfloat16"
    await engine.stop()


async def test_concurrent_requests_share_forward_passes(engine: InferenceEngine) -> None:
    images = random_images([(60, 60)] * 32)
    deadline = time.perf_counter() + 30
    with engine.expecting(len(images)):  # as the predictor does while requests decode
        tasks = [asyncio.create_task(engine.predict([image], 5, None, deadline)) for image in images]
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks)
    assert len(results) == 32
    registry = engine.metrics.registry
    batches = registry.get_sample_value("glimpse_batch_size_count")
    assert batches is not None
    assert batches <= 4  # 32 images in batches of at most 16: 2 passes, with slack for timing
    assert all(len(prediction.indices) == 5 for (prediction,) in results)


async def test_full_queue_is_refused_at_once() -> None:
    engine = make_engine(max_queue_size=4)  # not started: nothing drains the queue
    deadline = time.perf_counter() + 30
    waiting = asyncio.create_task(engine.predict(random_images([(20, 20)] * 4), 1, None, deadline))
    await asyncio.sleep(0)
    started = time.perf_counter()
    with pytest.raises(Overloaded) as raised:
        await engine.predict(random_images([(20, 20)]), 1, None, deadline)
    assert time.perf_counter() - started < 0.1
    assert raised.value.headers["Retry-After"] == "1"
    waiting.cancel()
    engine.start()
    await engine.stop()


async def test_expired_requests_get_deadline_exceeded() -> None:
    engine = make_engine()
    engine.start()
    with pytest.raises(DeadlineExceeded):
        await engine.predict(random_images([(20, 20)]), 1, None, deadline=time.perf_counter() - 1)
    await engine.stop()


async def test_attention_map_kind_returns_the_raw_attention(engine: InferenceEngine) -> None:
    (image,) = random_images([(40, 44)])
    deadline = time.perf_counter() + 30
    (prediction,) = await engine.predict([image], 1, MapRequest("attention"), deadline)
    assert prediction.grid is not None
    assert prediction.target == prediction.indices[0]
    assert float(prediction.grid.sum()) == pytest.approx(1.0, abs=1e-4)  # attention sums to one


async def test_short_cpu_batches_run_on_the_event_loop_and_long_ones_in_the_inference_thread() -> None:
    engine = make_engine(max_batch_size=16)
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


async def test_inline_passes_can_be_turned_off_and_need_the_warm_up_s_estimate() -> None:
    for engine, warm in ((make_engine(inline_max_seconds=0.0), True), (make_engine(), False)):
        if warm:
            await engine.warm_up(channels=1, image_size=60, max_batch_size=32)
        engine.start()
        threads = record_forward_threads(engine)
        await engine.predict(random_images([(60, 60)]), 1, None, time.perf_counter() + 30)
        await engine.stop()
        assert threads == ["glimpse-inference_0"]


async def test_after_an_inline_batch_the_next_waits_for_as_many_images_but_no_longer_than_the_delay() -> None:
    engine = make_engine(max_batch_size=16, max_batch_delay_ms=400.0)
    await engine.warm_up(channels=1, image_size=60, max_batch_size=16)
    engine.start()
    deadline = time.perf_counter() + 60

    def batches() -> float:
        return engine.metrics.registry.get_sample_value("glimpse_batch_size_count") or 0.0

    async def timed(count: int) -> float:
        started = time.perf_counter()
        await engine.predict(random_images([(60, 60)] * count), 1, None, deadline)
        return time.perf_counter() - started

    # A lone request is not held back: nothing ran before it, and then a batch of one.
    assert await timed(1) < 0.3
    assert await timed(1) < 0.3
    await engine.predict(random_images([(60, 60)] * 3), 1, None, deadline)  # an inline batch of 3
    before = batches()
    first = asyncio.create_task(timed(1))
    await asyncio.sleep(0.1)  # the first waits for two more, which arrive 0.1 s later
    await asyncio.gather(first, engine.predict(random_images([(60, 60)] * 2), 1, None, deadline))
    assert batches() == before + 1
    assert first.result() >= 0.1
    # Of the three it now expects, only one comes: it goes when the 0.4 s delay is over.
    lone = await timed(1)
    await engine.stop()
    assert 0.4 <= lone < 1.5
