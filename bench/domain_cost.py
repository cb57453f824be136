"""What the in-domain verdict and the polarity step add to a request, on the CPU.

Times, on one thread and two, the bundled model's forward pass as served (batch norm folded,
channels-last) and the score's extra tensor work on its output as the engine calls it
(:meth:`models.domain.DomainScorer.output_score`), for 60×60 and 100×100 canvases at batch 1, 8 and 32;
and the per-image host work: :func:`models.preprocessing.has_light_border` (the polarity decision),
:func:`models.domain.colourful_fraction` and :meth:`~models.domain.DomainScorer.with_colour_score`, on a
60×60 grey canvas, and ``colourful_fraction`` on a 640×427 colour photo. The median of nine timings,
forward and score alternating so that a shared machine's drift hits both alike. The last lines give the
per-image total for a 60×60 canvas at batch 8, the figure to set beside a request's CPU time
(``python -m bench.request_cost``).

    python -m bench.domain_cost
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from PIL import Image

from models.attention_net import channels_last
from models.checkpoint import DEFAULT_MODEL_DIR, load_model
from models.domain import colourful_fraction, load_domain_scorer
from models.preprocessing import has_light_border


def median_ms(function: Callable[[], object], repeats: int) -> Callable[[], float]:
    def sample() -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        return (time.perf_counter() - start) / repeats * 1e3

    return sample


def host_us(function: Callable[[], object]) -> float:
    sample = median_ms(function, 200)
    sample()
    return statistics.median(sample() for _ in range(9)) * 1e3


@torch.inference_mode()
def main() -> None:
    model, card = load_model(DEFAULT_MODEL_DIR)
    model = channels_last(model.fuse_for_inference())
    scorer = load_domain_scorer(DEFAULT_MODEL_DIR, card)
    assert scorer is not None
    print(f"{platform.machine()} torch {torch.__version__}")
    print("threads size batch forward_ms score_ms score/forward score_us/image")
    per_image_us: dict[tuple[int, int, int], float] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for size in (60, 100):
            for batch in (1, 8, 32):
                x = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
                output = model(x)
                repeats = 40 if batch == 1 else 10 if batch == 8 else 5
                forward = median_ms(partial(model, x), repeats)
                score = median_ms(partial(scorer.output_score, output), repeats * 4)
                forward(), score()  # warm-up
                times: dict[str, list[float]] = {"forward": [], "score": []}
                for _ in range(9):
                    times["forward"].append(forward())
                    times["score"].append(score())
                f, s = statistics.median(times["forward"]), statistics.median(times["score"])
                per_image_us[threads, size, batch] = s / batch * 1e3
                print(f"{threads} {size}x{size} {batch} {f:.3f} {s:.3f} {s / f:.1%} {s / batch * 1e3:.1f}")
    torch.set_num_threads(1)
    from sklearn.datasets import load_sample_images

    canvas_pixels = np.random.default_rng(0).integers(0, 256, (60, 60, 1), dtype=np.uint8)
    canvas = Image.new("L", (60, 60))
    photo = Image.fromarray(load_sample_images().images[0])
    host = {
        "has_light_border, 60x60 canvas": host_us(partial(has_light_border, canvas_pixels)),
        "colourful_fraction, 60x60 L canvas": host_us(partial(colourful_fraction, canvas)),
        "with_colour_score": host_us(partial(scorer.with_colour_score, 0.9, 0.0)),
    }
    for name, us in host.items():
        print(f"{name}: {us:.1f} us")
    print(f"colourful_fraction, 640x427 RGB photo: {host_us(partial(colourful_fraction, photo)):.1f} us")
    score_us = per_image_us[1, 60, 8]
    total = score_us + sum(host.values())
    print(f"per 60x60 canvas at batch 8, one thread: {total:.1f} us (score {score_us:.1f} + host)")


if __name__ == "__main__":
    main()
