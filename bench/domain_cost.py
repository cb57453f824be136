"""What the in-domain score adds to a forward pass, per batch, on the CPU.

Times the bundled model's forward pass as served (batch norm folded, channels-last) and the score's
extra tensor work on its output (:meth:`models.domain.DomainScorer.score`) for 60×60 and 100×100
canvases at batch 1 and 32, one thread and two; and :func:`models.domain.colourful_fraction`, the host
statistic, on a 60×60 grey canvas and a 640×427 colour photo. The median of nine timings, forward and
score alternating so that a shared machine's drift hits both alike.

    python -m bench.domain_cost
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from PIL import Image

from models.attention_net import channels_last
from models.checkpoint import DEFAULT_MODEL_DIR, load_model
from models.domain import colourful_fraction, load_domain_scorer


def median_ms(function: Callable[[], object], repeats: int) -> Callable[[], float]:
    def sample() -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        return (time.perf_counter() - start) / repeats * 1e3

    return sample


@torch.inference_mode()
def main() -> None:
    model, card = load_model(DEFAULT_MODEL_DIR)
    model = channels_last(model.fuse_for_inference())
    scorer = load_domain_scorer(DEFAULT_MODEL_DIR, card)
    assert scorer is not None
    print(f"{platform.machine()} torch {torch.__version__}")
    print("threads size batch forward_ms score_ms score/forward")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for size in (60, 100):
            for batch in (1, 32):
                x = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
                output = model(x)
                colourful = torch.zeros(batch)
                repeats = 40 if batch == 1 else 5
                forward = median_ms(partial(model, x), repeats)
                score = median_ms(partial(scorer.score, output, x, colourful=colourful), repeats)
                forward(), score()  # warm-up
                times: dict[str, list[float]] = {"forward": [], "score": []}
                for _ in range(9):
                    times["forward"].append(forward())
                    times["score"].append(score())
                f, s = statistics.median(times["forward"]), statistics.median(times["score"])
                print(f"{threads} {size}x{size} {batch} {f:.3f} {s:.3f} {s / f:.1%}")
    from sklearn.datasets import load_sample_images

    photo = Image.fromarray(load_sample_images().images[0])
    canvas = Image.new("L", (60, 60))
    for name, image in (("60x60 L canvas", canvas), ("640x427 RGB photo", photo)):
        sample = median_ms(partial(colourful_fraction, image), 50)
        ms = statistics.median(sample() for _ in range(9))
        print(f"colourful_fraction {name}: {ms:.3f} ms")


if __name__ == "__main__":
    main()
