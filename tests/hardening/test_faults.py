"""Faults: device out-of-memory during a batch, and broken model artifacts at start-up.

Out-of-memory is injected on the CPU: a wrapper model raises ``torch.cuda.OutOfMemoryError`` for batches
larger than it "has memory for", as a GPU would. Start-up faults start real uvicorn processes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from torch import Tensor, nn

from app.config import Settings
from app.engine.engine import EngineConfig, InferenceEngine
from app.engine.work import Prediction
from app.errors import Overloaded
from app.runtime.device import BFLOAT16_UNSUPPORTED
from app.runtime.metrics import Metrics
from models.attention_net import AttentionNet, AttentionOutput
from models.checkpoint import CARD_FILE, DEFAULT_MODEL_DIR, WEIGHTS_FILE, load_model, sha256_of
from tests.serving import launch, wait_ready


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
    model, card = load_model(DEFAULT_MODEL_DIR)
    fake = OutOfMemoryAbove(model.fuse_for_inference(), capacity)
    config = EngineConfig.from_settings(
        Settings(_env_file=None, max_batch_size=8, max_batch_delay_ms=50.0), None
    )
    engine = InferenceEngine(fake, card.preprocessing, torch.device("cpu"), config, Metrics())  # type: ignore[arg-type]
    return engine, fake


def images(count: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (60, 60, 1), generator=generator, dtype=torch.uint8) for _ in range(count)]


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


def _copy_model(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, directory)
    return directory


def _edit_card(directory: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    card = json.loads((directory / CARD_FILE).read_text())
    edit(card)
    (directory / CARD_FILE).write_text(json.dumps(card))


def _truncate_and_rehash(directory: Path) -> None:
    weights = directory / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    _edit_card(directory, lambda card: card["weights"].update(sha256=sha256_of(weights)))


def _flip_a_byte(directory: Path) -> None:
    weights = directory / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


BROKEN_MODELS: dict[str, Callable[[Path], object]] = {
    "missing directory": lambda d: shutil.rmtree(d),
    "missing weights": lambda d: (d / WEIGHTS_FILE).unlink(),
    "missing card": lambda d: (d / CARD_FILE).unlink(),
    "truncated weights": lambda d: (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:1000]),
    "truncated weights, card rehashed": _truncate_and_rehash,
    "tampered weights": _flip_a_byte,
    "card not JSON": lambda d: (d / CARD_FILE).write_text("{ not json"),
    "card architecture differs": lambda d: _edit_card(d, lambda c: c["config"].update(stages=[[32, 2]])),
    "card has 9 labels": lambda d: _edit_card(d, lambda c: c["labels"].pop()),
    "card is an old format": lambda d: _edit_card(d, lambda c: c.update(format="glimpse-model-card/0")),
}


def test_broken_models_stop_startup_with_one_clear_line(tmp_path: Path) -> None:
    """Every broken copy: non-zero exit, exactly one 'startup failed' line, no traceback, never ready."""
    launched = {}
    for index, (name, breakage) in enumerate(BROKEN_MODELS.items()):
        directory = _copy_model(tmp_path / str(index))
        breakage(directory)
        launched[name] = launch({"GLIMPSE_MODEL_DIR": str(directory)})
    launched["GLIMPSE_DEVICE=cuda without CUDA"] = launch({"GLIMPSE_DEVICE": "cuda"})
    answers = {name: (server.process.wait(timeout=120), server.output()) for name, server in launched.items()}
    for name, (exit_code, output) in answers.items():
        lines = [line for line in output.splitlines() if "glimpse: startup failed" in line]
        assert exit_code != 0, f"{name}: exited {exit_code}"
        assert len(lines) == 1, f"{name}:\n{output}"
        others = [line for line in output.splitlines() if line and not line.startswith("INFO:")]
        assert others == [lines[0], "ERROR:    Application startup failed. Exiting."], others
        assert lines[0].startswith("CRITICAL:"), lines[0]
        assert "Traceback" not in output, f"{name}:\n{output}"
        assert "Application startup complete" not in output
        assert "Uvicorn running on" not in output, f"{name}: the server listened:\n{output}"
        print(f"{name}: exit {exit_code}: {lines[0]}")


def test_an_explicit_bfloat16_stops_plain_uvicorn_in_one_line_where_the_cpu_cannot_run_it(
    cpu_bfloat16: bool,
) -> None:
    """``uvicorn app.main:app`` (no launcher to check the settings first): the lifespan's one line."""
    server = launch({"GLIMPSE_AMP_DTYPE": "bfloat16", "GLIMPSE_DEVICE": "cpu"})
    try:
        if cpu_bfloat16:
            wait_ready(server)
            runtime = httpx.get(f"{server.url}/models", timeout=10).json()["runtime"]
            assert runtime == {"device": "cpu", "precision": "bfloat16"}
            return
        exit_code, output = server.process.wait(timeout=120), server.output()
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert exit_code == 3, output
    others = [" ".join(line.split()) for line in output.splitlines() if line and not line.startswith("INFO:")]
    assert others == [
        f"CRITICAL: glimpse: startup failed: GLIMPSE_AMP_DTYPE=bfloat16: {BFLOAT16_UNSUPPORTED} "
        f"(GLIMPSE_MODEL_DIR={DEFAULT_MODEL_DIR})",
        "ERROR: Application startup failed. Exiting.",
    ], output
