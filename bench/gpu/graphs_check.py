"""CUDA graphs (``GLIMPSE_CUDA_GRAPHS``) against the eager pass, on a GPU: same answers, no implicit
host synchronisation, the GPU memory the graphs take, and the host time of ``forward_batch`` per batch.

Two engines serve the bundled model, one with graphs recorded for 60×60 images and one without.
Answers are compared on batches of 1, 3, 8 and 32 random 60×60 canvases with evidence maps, with
attention maps, and without maps; on a batch where only some images want a map, with a requested
class; and on a padded batch of mixed sizes (which runs eagerly in both). The graphs share one memory
pool, so the comparisons run twice in turn, each replay between other graphs' replays. Then each
engine's ``forward_batch`` is timed, alternating, for batches of 1, 8 and 32, predictions and maps;
the median of seven timings.

    python -m bench.gpu.graphs_check
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from app.config import Settings
from app.engine.engine import EngineConfig
from app.engine.forward import ForwardWork
from app.engine.work import MapRequest, Prediction
from models.checkpoint import DEFAULT_MODEL_DIR, load_model

SIZE = 60


def engine(cuda_graphs: bool) -> ForwardWork:
    torch.cuda.synchronize()
    before = torch.cuda.memory_reserved()
    model, card = load_model(DEFAULT_MODEL_DIR, "cuda")
    settings = Settings(cuda_graphs=cuda_graphs)
    config = EngineConfig.from_settings(settings, torch.bfloat16).forward
    device = torch.device("cuda")
    built = ForwardWork(model.fuse_for_inference(), card.preprocessing, device, config)
    started = time.perf_counter()
    built.warm_up(card.config.in_channels, SIZE, settings.max_batch_size)
    torch.cuda.synchronize()
    print(
        f"engine, graphs {'on' if cuda_graphs else 'off'}: warm-up {time.perf_counter() - started:.2f} s, "
        f"GPU memory reserved {(torch.cuda.memory_reserved() - before) / 2**20:.0f} MiB",
        flush=True,
    )
    return built


def canvases(count: int, seed: int, sizes: list[tuple[int, int]] | None = None) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sizes = sizes or [(SIZE, SIZE)] * count
    return [torch.randint(0, 256, (h, w, 1), dtype=torch.uint8, generator=generator) for h, w in sizes]


def compare(name: str, eager: list[Prediction], graphed: list[Prediction]) -> None:
    top1 = sum(
        e.indices[0] == g.indices[0] and e.target == g.target for e, g in zip(eager, graphed, strict=True)
    )
    score = max(
        abs(a - b)
        for e, g in zip(eager, graphed, strict=True)
        for a, b in zip(e.scores, g.scores, strict=True)
    )
    heat = max(
        (
            int(np.abs(e.heat.astype(int) - g.heat.astype(int)).max())
            for e, g in zip(eager, graphed, strict=True)
            if e.heat is not None and g.heat is not None
        ),
        default=0,
    )
    maps = sum(e.heat is not None for e in eager), sum(g.heat is not None for g in graphed)
    print(
        f"{name}: top-1 and target equal {top1}/{len(eager)}, maps {maps[0]}/{maps[1]}, "
        f"largest score difference {score:.2e}, "
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
    assert graphed._graphed is not None
    split = [key[0] for key, plan in graphed._graphed.plans.items() if key[4] is None and len(plan) > 1]
    print(f"batch sizes split rather than padded (predictions): {split or 'none'}", flush=True)
    maps = MapRequest("evidence")
    some: list[MapRequest | None] = [MapRequest("attention"), None, MapRequest("attention", target=4)]
    cases: list[tuple[str, list[torch.Tensor], list[MapRequest | None]]] = []
    for count in (1, 3, 8, 32):
        images = canvases(count, seed=count)
        cases += [
            (f"batch {count}, evidence", images, [maps] * count),
            (f"batch {count}, attention", images, [MapRequest("attention")] * count),
            (f"batch {count}, no maps", images, [None] * count),
        ]
    cases.append(("batch 5, some attention maps", canvases(5, seed=5), some + some[:2]))
    padded = canvases(4, seed=99, sizes=[(60, 60), (64, 61), (57, 70), (60, 60)])
    cases.append(("padded batch", padded, [maps] * 4))
    for round_ in (1, 2):
        for name, images, requests in cases:
            top_ks = [10] * len(images)
            compare(
                f"round {round_}, {name}",
                *(e.forward_batch(images, top_ks, requests) for e in (eager, graphed)),
            )
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
