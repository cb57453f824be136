"""CUDA graphs of the forward pass (``GLIMPSE_CUDA_GRAPHS``): the same answers as the eager pass.

The graphs exist on CUDA only; on a CPU the setting changes nothing, which the first test checks.
The others run where a GPU is present (``bench/gpu/graphs_check.py`` runs the same comparison and
times it on the GPU host).
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from app.config import Settings
from app.cuda_graphs import GraphedForward
from app.engine import EngineConfig, InferenceEngine, MapRequest
from app.metrics import Metrics
from models.checkpoint import DEFAULT_MODEL_DIR, load_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def make_engine(device: str, cuda_graphs: bool) -> InferenceEngine:
    model, card = load_model(DEFAULT_MODEL_DIR, device)
    config = EngineConfig(max_batch_size=8, amp_dtype=torch.bfloat16, cuda_graphs=cuda_graphs)
    model = model.fuse_for_inference()
    engine = InferenceEngine(model, card.preprocessing, torch.device(device), config, Metrics())
    asyncio.run(engine.warm_up(card.config.in_channels, 60, 8))
    return engine


def canvases(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(count)
    return [torch.randint(0, 256, (60, 60, 1), dtype=torch.uint8, generator=generator) for _ in range(count)]


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


@cuda
@pytest.mark.parametrize("count", [1, 3, 8])
def test_a_graphed_batch_answers_as_the_eager_pass(count: int) -> None:
    """A batch of 3 replays the graph of 4; the spare row must not change the three answers."""
    eager, graphed = make_engine("cuda", False), make_engine("cuda", True)
    images = canvases(count)
    requests: list[MapRequest | None] = [MapRequest("evidence")] * count
    for plain, replayed in zip(
        eager.forward_batch(images, [3] * count, requests),
        graphed.forward_batch(images, [3] * count, requests),
        strict=True,
    ):
        assert plain.indices[0] == replayed.indices[0]
        assert plain.scores == pytest.approx(replayed.scores, abs=1e-2)  # bf16; another batch size's kernels


@cuda
def test_only_recorded_shapes_replay() -> None:
    model, _ = load_model(DEFAULT_MODEL_DIR, "cuda")
    graphed = GraphedForward(model.fuse_for_inference(), torch.bfloat16, channels_last=True)
    graphed.capture(1, 60, 60, 4)
    x = torch.zeros(3, 1, 60, 60, device="cuda").contiguous(memory_format=torch.channels_last)
    output = graphed(x)
    assert output is not None
    assert output.logits.shape[0] == 3
    assert graphed(torch.zeros(5, 1, 60, 60, device="cuda")) is None  # past the largest bucket
    assert graphed(torch.zeros(2, 1, 64, 60, device="cuda")) is None  # another image size
