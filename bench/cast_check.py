"""How the engine's CPU pass holds its convolutions: three ways, timed side by side.

Three engines serve the bundled model under CPU bfloat16 autocast, one thread:

- float32 weights, which autocast casts to bfloat16 on every call;
- weights stored in bfloat16 (:func:`models.attention_net.cast_convolutions`, the engine's fallback
  where PyTorch has no oneDNN);
- weights packed for oneDNN with the ReLU fused (:func:`models.packing.pack_convolutions`, what the
  engine does on a CPU).

For each batch size it checks that the answers are bitwise the same, then times ``forward_batch`` in
alternating rounds and prints the best round of each: CPU milliseconds per batch, and each one's
ratio to the first.

    python -m bench.cast_check
"""

from __future__ import annotations

import time

import torch

from app.config import Settings
from app.engine.engine import EngineConfig
from app.engine.forward import ForwardWork
from models.attention_net import cast_convolutions, channels_last
from models.checkpoint import DEFAULT_MODEL_DIR, load_model
from models.packing import pack_convolutions

ROUNDS = 4
PASSES = 60


def engine_with(convolutions: str) -> ForwardWork:
    model, card = load_model(DEFAULT_MODEL_DIR)
    config = EngineConfig.from_settings(Settings(), torch.bfloat16).forward
    cpu = torch.device("cpu")
    engine = ForwardWork(model.fuse_for_inference(), card.preprocessing, cpu, config)
    fresh = channels_last(load_model(DEFAULT_MODEL_DIR)[0].fuse_for_inference())
    if convolutions == "float32":
        engine.model = fresh
    elif convolutions == "bfloat16":
        engine.model = cast_convolutions(fresh, torch.bfloat16)
    else:
        pack_convolutions(fresh, torch.bfloat16)
        engine.model = fresh
    return engine


def cpu_ms_per_batch(engine: ForwardWork, images: list[torch.Tensor]) -> float:
    started = time.process_time()
    for _ in range(PASSES):
        engine.forward_batch(images, [5] * len(images), [None] * len(images))
    return (time.process_time() - started) / PASSES * 1e3


def main() -> None:
    torch.set_num_threads(1)
    engines = {name: engine_with(name) for name in ("float32", "bfloat16", "packed")}
    generator = torch.Generator().manual_seed(0)
    pool = [torch.randint(0, 256, (60, 60, 1), generator=generator, dtype=torch.uint8) for _ in range(32)]
    print(f"# python -m bench.cast_check: CPU ms per forward_batch, best of {ROUNDS} rounds of {PASSES}")
    for batch in (1, 4, 8, 16, 32):
        images = pool[:batch]
        answers = [engine.forward_batch(images, [10] * batch, [None] * batch) for engine in engines.values()]
        same = all(
            a.indices == b.indices and a.scores == b.scores
            for other in answers[1:]
            for a, b in zip(answers[0], other, strict=True)
        )
        best = dict.fromkeys(engines, float("inf"))
        for _ in range(ROUNDS):
            for name, engine in engines.items():
                best[name] = min(best[name], cpu_ms_per_batch(engine, images))
        base = best["float32"]
        cells = ", ".join(f"{name} {ms:.3f} ms ({ms / base:.2f}x)" for name, ms in best.items())
        print(f"batch {batch:2d}: {cells}; same answers: {same}")


if __name__ == "__main__":
    main()
