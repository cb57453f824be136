"""The forward work: grouping, batched == single and padded == unpadded answers, maps, packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.config import Settings
from app.engine.engine import EngineConfig
from app.engine.forward import ForwardWork
from app.engine.work import ImageWork, MapKind, MapRequest, Prediction, plan_groups, rank_classes
from models.attention_net import channels_last
from models.checkpoint import DEFAULT_MODEL_DIR, load_model
from models.maps import render_heatmaps
from models.packing import PackedConv2d, can_pack


def make_forward(amp_dtype: torch.dtype | None = None) -> ForwardWork:
    model, card = load_model(DEFAULT_MODEL_DIR)
    config = EngineConfig.from_settings(Settings(), amp_dtype).forward
    return ForwardWork(model.fuse_for_inference(), card.preprocessing, torch.device("cpu"), config)


def alone(
    forward: ForwardWork, images: list[torch.Tensor], top_k: int, request: MapRequest | None
) -> list[Prediction]:
    """Each image in a forward pass of its own."""
    return [forward.forward_batch([image], [top_k], [request])[0] for image in images]


def test_plan_groups_keeps_sizes_together_and_splits_wasteful_padding() -> None:
    sizes = [(60, 60), (60, 60), (62, 61), (200, 200), (60, 60)]
    groups = plan_groups(sizes, max_batch_pixels=1 << 30)
    assert sorted(map(sorted, groups)) == [[0, 1, 2, 4], [3]]
    assert plan_groups([(100, 100)] * 4, max_batch_pixels=20_000) == [[0, 1], [2, 3]]


def random_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (h, w, 1), generator=generator, dtype=torch.uint8) for h, w in sizes]


def test_a_mixed_size_batch_answers_as_each_image_alone() -> None:
    # Odd sides padded to even ones: the first convolution reads the padding, which must be zero.
    forward = make_forward()
    sizes = [(60, 60), (48, 72), (64, 40), (33, 57), (60, 60), (57, 61), (61, 59)]
    images = random_images(sizes)
    request = MapRequest("evidence", target=3)
    batched = forward.forward_batch(images, [10] * len(images), [request] * len(images))
    for image, together, single in zip(images, batched, alone(forward, images, 10, request), strict=True):
        assert together.indices == single.indices
        assert together.scores == pytest.approx(single.scores, abs=1e-5)
        assert together.grid is not None
        assert single.grid is not None
        assert (
            together.grid.shape == single.grid.shape == ((image.shape[0] + 3) // 4, (image.shape[1] + 3) // 4)
        )
        assert torch.allclose(together.grid, single.grid, atol=1e-5)
        assert together.heat is not None
        assert single.heat is not None
        assert np.abs(together.heat.astype(int) - single.heat.astype(int)).max() <= 1


def test_heat_images_of_a_mixed_batch_render_each_image_s_own_map() -> None:
    """Maps of several sizes and both kinds, beside an image that asked for none, rendered per size group
    on the device: each heat image is its own grid resampled onto its own pixels."""
    forward = make_forward()
    sizes = [(60, 60), (48, 72), (60, 60), (33, 57), (60, 60)]
    images = random_images(sizes, seed=2)
    requests = [
        MapRequest("evidence"),
        MapRequest("attention", 4),
        MapRequest("evidence", 7),  # the same size as the first: a swap within the group would show
        MapRequest("evidence", 1),
        None,
    ]
    predictions = forward.forward_batch(images, [3] * len(images), requests)
    for (height, width), request, prediction in zip(sizes, requests, predictions, strict=True):
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
            assert float(prediction.grid.sum()) == pytest.approx(1.0, abs=1e-4)  # attention sums to one


def test_the_batch_work_splits_by_size_and_answers_each_image() -> None:
    """What the batcher calls: ``split`` groups cheap-to-pad sizes, ``run`` answers a group in order."""
    forward = make_forward()
    images = random_images([(60, 60), (200, 200), (60, 60)], seed=4)
    work = [ImageWork(image, 2, None) for image in images]
    assert sorted(map(sorted, forward.split(work))) == [[0, 2], [1]]
    answers = forward.run([work[0], work[2]])
    expected = alone(forward, [images[0], images[2]], 2, None)
    assert [a.indices for a in answers if isinstance(a, Prediction)] == [e.indices for e in expected]


def test_warm_up_measures_a_positive_cost_per_pixel() -> None:
    assert make_forward().warm_up(channels=1, image_size=60, max_batch_size=4) > 0


@pytest.mark.parametrize("kind", ["evidence", "attention"])
def test_a_same_size_batch_answers_as_the_padded_path(kind: MapKind) -> None:
    """Same-size batches wanting one kind of map run as one unit of device work (the one CUDA graphs
    record); with a smaller image beside them, the same images take the general, padded path."""
    forward = make_forward()
    images = random_images([(60, 60)] * 4, seed=5)
    requests = [MapRequest(kind), None, MapRequest(kind, target=2), MapRequest(kind)]
    same_size = forward.forward_batch(images, [10, 3, 1, 10], requests)
    padded = forward.forward_batch(
        [*images, *random_images([(57, 50)])], [10, 3, 1, 10, 1], [*requests, None]
    )
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
    forward = make_forward(torch.bfloat16)
    packed = [m for m in forward.model.modules() if isinstance(m, PackedConv2d)]
    assert {m.dtype for m in packed} == {torch.bfloat16}
    assert not any(isinstance(m, torch.nn.Conv2d) for m in forward.model.modules())
    assert forward.model.classifier.weight.dtype == torch.float32  # the evidence maps read it
    reference = make_forward(torch.bfloat16)
    fresh, _ = load_model(DEFAULT_MODEL_DIR)
    reference.model = channels_last(fresh.fuse_for_inference())  # float32 weights, cast per call
    images = random_images([(60, 60), (60, 60), (48, 72), (33, 57)], seed=3)
    maps = [MapRequest("evidence"), MapRequest("attention", target=2), None, MapRequest("evidence", 7)]
    answers = forward.forward_batch(images, [10] * 4, maps)
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
    forward = make_forward(torch.bfloat16)
    assert not any(isinstance(m, PackedConv2d) for m in forward.model.modules())
    conv_dtypes = {m.weight.dtype for m in forward.model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert conv_dtypes == {torch.bfloat16}
    (answer,) = forward.forward_batch(random_images([(60, 60)], seed=7), [3], [None])
    assert len(answer.indices) == 3


@pytest.mark.skipif(not can_pack(), reason="this PyTorch build has no oneDNN fused convolution")
def test_a_float32_cpu_engine_packs_its_convolutions_with_the_same_answers_to_float_tolerance() -> None:
    forward = make_forward()
    assert {m.dtype for m in forward.model.modules() if isinstance(m, PackedConv2d)} == {torch.float32}
    reference = make_forward()
    fresh, _ = load_model(DEFAULT_MODEL_DIR)
    reference.model = channels_last(fresh.fuse_for_inference())
    images = random_images([(60, 60), (100, 100), (48, 72)], seed=5)
    maps = [MapRequest("evidence"), None, MapRequest("attention")]
    answers = forward.forward_batch(images, [10] * 3, maps)
    for got, expected in zip(answers, reference.forward_batch(images, [10] * 3, maps), strict=True):
        assert got.indices == expected.indices
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)
        if got.grid is not None and expected.grid is not None:
            torch.testing.assert_close(got.grid, expected.grid, atol=1e-5, rtol=1e-4)


@pytest.mark.bfloat16
def test_bfloat16_mixed_size_batch_equals_single_image_runs() -> None:
    """Under CPU autocast (GLIMPSE_AMP_DTYPE=bfloat16) padding still changes no answer."""
    forward = make_forward(torch.bfloat16)
    images = random_images([(60, 60), (48, 72), (64, 40), (33, 57), (60, 60), (57, 61), (61, 59)], seed=1)
    request = MapRequest("evidence", target=3)
    batched = forward.forward_batch(images, [10] * len(images), [request] * len(images))
    for together, single in zip(batched, alone(forward, images, 10, request), strict=True):
        assert together.indices[0] == single.indices[0]
        assert together.scores == pytest.approx(single.scores, abs=1e-3)  # bf16 keeps 8 bits of mantissa
        assert together.grid is not None
        assert single.grid is not None
        assert torch.allclose(together.grid, single.grid, atol=1e-2 * float(single.grid.abs().max()))
    assert forward.precision == "bfloat16"


def test_attention_map_kind_returns_the_raw_attention() -> None:
    (image,) = random_images([(40, 44)])
    (prediction,) = make_forward().forward_batch([image], [1], [MapRequest("attention")])
    assert prediction.grid is not None
    assert prediction.target == prediction.indices[0]
    assert float(prediction.grid.sum()) == pytest.approx(1.0, abs=1e-4)  # attention sums to one
