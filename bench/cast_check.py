"""Convolutions stored in bfloat16 against cast by autocast on every call: the engine's CPU pass.

Two engines serve the bundled model under CPU bfloat16 autocast, one thread; one keeps float32
convolution weights, which autocast casts on every call, the other stores them in bfloat16
(:func:`models.attention_net.cast_convolutions`, what the engine does on a CPU). For each batch size
it checks that the answers are bitwise the same, then times ``forward_batch`` in alternating rounds
and prints the best round of each: CPU milliseconds per batch.

    python -m bench.cast_check
"""

from __future__ import annotations

import time

import torch

from app.engine import EngineConfig, InferenceEngine
from app.metrics import Metrics
from models.attention_net import channels_last
from models.checkpoint import DEFAULT_MODEL_DIR, load_model

ROUNDS = 4
PASSES = 60


def engine_with(cast: bool) -> InferenceEngine:
    model, card = load_model(DEFAULT_MODEL_DIR)
    config = EngineConfig(amp_dtype=torch.bfloat16)
    cpu = torch.device("cpu")
    engine = InferenceEngine(model.fuse_for_inference(), card.preprocessing, cpu, config, Metrics())
    if not cast:  # the engine cast its convolutions; put float32 ones back
        fresh, _ = load_model(DEFAULT_MODEL_DIR)
        engine.model = channels_last(fresh.fuse_for_inference())
    return engine


def cpu_ms_per_batch(engine: InferenceEngine, images: list[torch.Tensor]) -> float:
    started = time.process_time()
    for _ in range(PASSES):
        engine.forward_batch(images, [5] * len(images), [None] * len(images))
    return (time.process_time() - started) / PASSES * 1e3


def main() -> None:
    torch.set_num_threads(1)
    engines = {"float32 weights": engine_with(False), "bfloat16 convolutions": engine_with(True)}
    generator = torch.Generator().manual_seed(0)
    pool = [torch.randint(0, 256, (60, 60, 1), generator=generator, dtype=torch.uint8) for _ in range(32)]
    print(f"# python -m bench.cast_check: CPU ms per forward_batch, best of {ROUNDS} rounds of {PASSES}")
    for batch in (1, 4, 8, 16, 32):
        images = pool[:batch]
        answers = [engine.forward_batch(images, [10] * batch, [None] * batch) for engine in engines.values()]
        same = all(a.indices == b.indices and a.scores == b.scores for a, b in zip(*answers, strict=True))
        best = dict.fromkeys(engines, float("inf"))
        for _ in range(ROUNDS):
            for name, engine in engines.items():
                best[name] = min(best[name], cpu_ms_per_batch(engine, images))
        old, new = best.values()
        print(f"batch {batch:2d}: {old:.3f} -> {new:.3f} ms ({new / old:.2f}x), same answers: {same}")


if __name__ == "__main__":
    main()
