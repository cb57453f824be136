"""CUDA graphs (``GLIMPSE_CUDA_GRAPHS``) against the eager forward pass, on a GPU: same answers, no
implicit host synchronisation, and the host time of ``forward_batch`` per batch.

Two engines serve the bundled model, one with graphs recorded for 60×60 images and one without.
Answers are compared on batches of 1, 3, 8 and 32 random 60×60 canvases with evidence maps, and on a
padded batch of mixed sizes (which runs eagerly in both). Then each engine's ``forward_batch`` is
timed, alternating, for batches of 1, 8 and 32, predictions and maps; the median of seven timings.

    python -m bench.gpu.graphs_check
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from app.engine import EngineConfig, InferenceEngine, MapRequest, Prediction
from app.metrics import Metrics
from models.checkpoint import DEFAULT_MODEL_DIR, load_model

SIZE = 60


def engine(cuda_graphs: bool) -> InferenceEngine:
    model, card = load_model(DEFAULT_MODEL_DIR, "cuda")
    config = EngineConfig(amp_dtype=torch.bfloat16, cuda_graphs=cuda_graphs)
    device = torch.device("cuda")
    built = InferenceEngine(model.fuse_for_inference(), card.preprocessing, device, config, Metrics())
    asyncio.run(built.warm_up(card.config.in_channels, SIZE, config.max_batch_size))
    return built


def canvases(count: int, seed: int, sizes: list[tuple[int, int]] | None = None) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sizes = sizes or [(SIZE, SIZE)] * count
    return [torch.randint(0, 256, (h, w, 1), dtype=torch.uint8, generator=generator) for h, w in sizes]


def compare(name: str, eager: list[Prediction], graphed: list[Prediction]) -> None:
    top1 = sum(e.indices[0] == g.indices[0] for e, g in zip(eager, graphed, strict=True))
    score = max(
        abs(a - b)
        for e, g in zip(eager, graphed, strict=True)
        for a, b in zip(e.scores, g.scores, strict=True)
    )
    heat = max(
        int(np.abs(e.heat.astype(int) - g.heat.astype(int)).max())
        for e, g in zip(eager, graphed, strict=True)
        if e.heat is not None and g.heat is not None
    )
    print(
        f"{name}: top-1 equal {top1}/{len(eager)}, largest score difference {score:.2e}, "
        f"largest heat difference {heat} levels",
        flush=True,
    )


def median_us(function: Callable[[], object], repeat: int = 50) -> float:
    function()
    times = []
    for _ in range(7):
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeat):
            function()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - started) / repeat * 1e6)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    eager, graphed = engine(False), engine(True)
    maps = MapRequest("evidence")
    for count in (1, 3, 8, 32):
        images = canvases(count, seed=count)
        compare(
            f"batch {count}",
            *(e.forward_batch(images, [3] * count, [maps] * count) for e in (eager, graphed)),
        )
    padded = canvases(4, seed=99, sizes=[(60, 60), (64, 61), (57, 70), (60, 60)])
    compare("padded batch", *(e.forward_batch(padded, [3] * 4, [maps] * 4) for e in (eager, graphed)))
    torch.cuda.set_sync_debug_mode("error")
    try:
        graphed.forward_batch(canvases(8, seed=1), [3] * 8, [maps] * 8)
        print("no implicit sync with graphs", flush=True)
    except RuntimeError as exc:
        print(f"IMPLICIT SYNC with graphs: {str(exc).splitlines()[0]}", flush=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for count in (1, 8, 32):
        images = canvases(count, seed=count)
        without: list[MapRequest | None] = [None] * count
        with_maps: list[MapRequest | None] = [maps] * count
        for kind, requests in (("predict", without), ("maps", with_maps)):
            timings: dict[str, list[float]] = {"eager": [], "graphs": []}
            for _ in range(2):
                for name, which in (("eager", eager), ("graphs", graphed)):
                    run = partial(which.forward_batch, images, [3] * count, requests)
                    timings[name].append(median_us(run))
            e, g = min(timings["eager"]), min(timings["graphs"])
            print(
                f"forward_batch, batch {count:2d}, {kind:7s}: eager {e:6.0f} µs, graphs {g:6.0f} µs",
                flush=True,
            )


if __name__ == "__main__":
    main()
