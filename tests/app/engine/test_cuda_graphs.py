"""CUDA graphs of a batch's device work (``GLIMPSE_CUDA_GRAPHS``): the same answers as the eager pass.

The graphs exist on CUDA only; on a CPU the setting changes nothing, which the first test checks. The
plans (pad a batch to one graph, or split it over several) are plain arithmetic and tested everywhere.
The rest run where a GPU is present (``bench/gpu/graphs_check.py`` runs the same comparison and times
it on the GPU host).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.config import Settings
from app.engine.cuda_graphs import GraphedBatch, cheapest_plan
from app.engine.engine import EngineConfig
from app.engine.forward import ForwardWork
from app.engine.work import MapKind, MapRequest, Prediction
from models.checkpoint import DEFAULT_MODEL_DIR, load_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def make_engine(device: str, cuda_graphs: bool) -> ForwardWork:
    model, card = load_model(DEFAULT_MODEL_DIR, device)
    settings = Settings(_env_file=None, max_batch_size=8, cuda_graphs=cuda_graphs)
    config = EngineConfig.from_settings(settings, torch.bfloat16).forward
    forward = ForwardWork(model.fuse_for_inference(), card.preprocessing, torch.device(device), config)
    forward.warm_up(card.config.in_channels, 60, settings.max_batch_size)
    return forward


def canvases(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(count)
    return [torch.randint(0, 256, (60, 60, 1), dtype=torch.uint8, generator=generator) for _ in range(count)]


@pytest.mark.bfloat16
def test_the_setting_is_on_by_default_and_changes_nothing_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLIMPSE_CUDA_GRAPHS", raising=False)
    assert Settings(_env_file=None).cuda_graphs is True
    monkeypatch.setenv("GLIMPSE_CUDA_GRAPHS", "false")
    assert Settings(_env_file=None).cuda_graphs is False
    images = canvases(3)
    requests: list[MapRequest | None] = [MapRequest("evidence")] * 3
    engines = [make_engine("cpu", cuda_graphs) for cuda_graphs in (False, True)]
    answers = [engine.forward_batch(images, [3] * 3, requests) for engine in engines]
    for plain, with_setting in zip(*answers, strict=True):
        assert plain.indices == with_setting.indices
        assert plain.scores == with_setting.scores
        assert plain.heat is not None
        assert with_setting.heat is not None
        assert (plain.heat == with_setting.heat).all()


def test_a_launch_bound_pass_pads_to_one_bucket() -> None:
    """When every bucket's replay takes about as long, spare rows are free: one replay."""
    seconds = {1: 100e-6, 2: 101e-6, 4: 101e-6, 8: 103e-6, 16: 105e-6, 32: 110e-6}
    assert cheapest_plan(1, seconds) == [1]
    assert cheapest_plan(3, seconds) == [4]
    assert cheapest_plan(17, seconds) == [32]
    assert cheapest_plan(32, seconds) == [32]


def test_a_compute_bound_pass_splits_into_binary_digits_smallest_first() -> None:
    """When a replay's time grows with its rows, padding 17 to 32 nearly doubles the work."""
    seconds = {bucket: 20e-6 + bucket * 170e-6 for bucket in (1, 2, 4, 8, 16, 32)}
    assert cheapest_plan(17, seconds) == [1, 16]
    assert cheapest_plan(23, seconds) == [1, 2, 4, 16]
    assert cheapest_plan(31, seconds) == [1, 2, 4, 8, 16]
    assert cheapest_plan(16, seconds) == [16]
    # A tie goes to the plan with fewer replays.
    assert cheapest_plan(3, {1: 1.0, 2: 2.0, 4: 3.0}) == [4]


def test_a_largest_bucket_below_a_power_of_two_still_plans_every_size() -> None:
    seconds = {1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0, 12: 12.0}
    for batch in range(1, 13):
        plan = cheapest_plan(batch, seconds)
        assert plan == sorted(plan)
        assert sum(plan) >= batch
        assert sum(plan) == batch or len(plan) == 1
    assert cheapest_plan(11, seconds) == [1, 2, 8]


def assert_same_answers(eager: list[Prediction], graphed: list[Prediction]) -> None:
    for plain, replayed in zip(eager, graphed, strict=True):
        assert plain.indices[0] == replayed.indices[0]
        assert plain.scores == pytest.approx(replayed.scores, abs=1e-2)  # bf16; another batch size's kernels
        assert plain.target == replayed.target
        if plain.heat is None:
            assert replayed.heat is None
        else:
            assert replayed.heat is not None
            assert np.abs(plain.heat.astype(int) - replayed.heat.astype(int)).max() <= 2


@cuda
@pytest.mark.parametrize("count", [1, 3, 8])
@pytest.mark.parametrize("kind", [None, "evidence", "attention"])
def test_a_graphed_batch_answers_as_the_eager_pass(count: int, kind: MapKind | None) -> None:
    """A batch of 3 replays the graph of 4; the spare row must not change the three answers."""
    eager, graphed = make_engine("cuda", False), make_engine("cuda", True)
    images = canvases(count)
    requests = [None if kind is None else MapRequest(kind)] * count
    assert_same_answers(
        eager.forward_batch(images, [3] * count, requests),
        graphed.forward_batch(images, [3] * count, requests),
    )


def split_every_batch(engine: ForwardWork) -> None:
    """Plan every batch as a compute-bound pass would: its binary digits, smallest first."""
    graphed = engine._graphed
    assert graphed is not None
    for key in graphed.plans:
        graphed.plans[key] = [1 << bit for bit in range(key[0].bit_length()) if key[0] >> bit & 1]


@cuda
@pytest.mark.parametrize("plans", ["as measured", "split"])
def test_graphs_replayed_in_turn_keep_each_answer(plans: str) -> None:
    """The graphs share one memory pool: each replay's answers must survive the other graphs' runs,
    those of the same batch's split too."""
    eager, graphed = make_engine("cuda", False), make_engine("cuda", True)
    if plans == "split":
        split_every_batch(graphed)
    images = canvases(5)
    batches: list[tuple[list[torch.Tensor], list[MapRequest | None]]] = [
        (images[:1], [MapRequest("evidence", target=7)]),
        (images, [None] * 5),
        (images[:2], [MapRequest("attention")] * 2),
        (images[:4], [MapRequest("evidence"), None, MapRequest("evidence", target=2), None]),
        (images[:3], [None, MapRequest("evidence", 1), MapRequest("attention")]),  # both kinds: eager
        (canvases(7), [MapRequest("evidence", target=i) for i in range(7)]),  # 7 = 1 + 2 + 4 when split
    ]
    for _ in range(2):
        for batch, requests in batches:
            top_ks = [10] * len(batch)
            assert_same_answers(
                eager.forward_batch(batch, top_ks, requests), graphed.forward_batch(batch, top_ks, requests)
            )


@cuda
def test_only_recorded_shapes_replay() -> None:
    def work(pixels: torch.Tensor, requested: torch.Tensor, variant: str | None) -> tuple[torch.Tensor, ...]:
        doubled = pixels * 2
        return (doubled, requested + 1) if variant == "plus" else (doubled,)

    graphed = GraphedBatch[str](work, torch.device("cuda"), channels_last=True)
    graphed.capture(1, 8, 8, 4, [None, "plus"])
    x = torch.rand(3, 1, 8, 8, device="cuda").contiguous(memory_format=torch.channels_last)
    plain = graphed(x, None, None)
    assert plain is not None
    assert len(plain) == 1
    assert torch.equal(plain[0], x * 2)
    plus = graphed(x, torch.tensor([4, 5, 6], device="cuda"), "plus")
    assert plus is not None
    assert plus[1].tolist() == [5, 6, 7]
    assert graphed(x, None, "minus") is None  # a variant never recorded
    graphed.plans[(3, 1, 8, 8, "plus")] = [1, 2]  # as a compute-bound pass would plan it
    split = graphed(x, torch.tensor([4, 5, 6], device="cuda"), "plus")
    assert split is not None
    assert torch.equal(split[0], x * 2)
    assert split[1].tolist() == [5, 6, 7]
    assert graphed(torch.zeros(5, 1, 8, 8, device="cuda"), None, None) is None  # past the largest bucket
    assert graphed(torch.zeros(2, 1, 9, 8, device="cuda"), None, None) is None  # another image size
