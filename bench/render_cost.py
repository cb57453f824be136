"""Rendering heat images: the service's way against the way it rendered them before, per batch.

The former way: resample every map onto the pixels with ``grid_sample``, then clamp, find the peak,
scale and round on every pixel. The service's way (:func:`app.pipeline.imaging.render_heatmaps`):
clamp and scale the few grid cells, resample by two small matrix products, round. Both produce the same heat
images up to one level where float rounding lands a pixel on the other side of .5; this script counts
those pixels too. Random maps of the bundled model's grid (stride 8) for 60×60, 100×100 and 224×224
images, batches of 1, 8 and 32; one thread; the median of nine timings, the two ways alternating so
that a shared machine's drift hits both alike. ``--device cuda`` times them on the GPU.

    python -m bench.render_cost [--device cuda]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from app.pipeline.imaging import render_heatmaps
from models.attention_net import input_sample_grid

STRIDE = 8


def render_before(maps: torch.Tensor, input_height: int, input_width: int, stride: int) -> torch.Tensor:
    """The previous rendering: ``grid_sample`` onto every pixel, then per-pixel clamping and scaling."""
    batch, height, width = maps.shape
    sample_grid = input_sample_grid(height, width, input_height, input_width, stride, maps.device)
    pixels = F.grid_sample(
        maps.clamp(min=0).unsqueeze(1).float(),
        sample_grid.expand(batch, -1, -1, -1),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    ).squeeze(1)
    peak = pixels.amax(dim=(1, 2), keepdim=True)
    usable = torch.isfinite(peak) & (peak > 0)
    scale = torch.where(usable, 255.0 / torch.where(usable, peak, 1.0), 0.0)
    return torch.round(pixels.clamp(min=0) * scale).clamp(max=255).to(torch.uint8)


def seconds_per_call(function: Callable[[], torch.Tensor], device: torch.device, repeat: int) -> float:
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)
    print(f"# {platform.node()} {platform.machine()}, torch {torch.__version__}, {device}, 1 thread")
    print("# size batch | before µs | now µs | now/before | pixels one level apart")
    with torch.inference_mode():
        for size in (60, 100, 224):
            cells = -(-size // STRIDE)
            for batch in (1, 8, 32):
                generator = torch.Generator().manual_seed(size)
                maps = torch.randn(batch, cells, cells, generator=generator).to(device)
                ways = {
                    "before": partial(render_before, maps, size, size, STRIDE),
                    "now": partial(render_heatmaps, maps, size, size, STRIDE),
                }
                repeat = max(5, 4000 // (batch * size // 20))
                times: dict[str, list[float]] = {name: [] for name in ways}
                for _ in range(9):
                    for name, way in ways.items():
                        times[name].append(seconds_per_call(way, device, repeat))
                before, now = (statistics.median(times[name]) * 1e6 for name in ("before", "now"))
                difference = (ways["before"]().int() - ways["now"]().int()).abs()
                assert int(difference.max()) <= 1
                print(
                    f"{size}×{size} {batch:2d} | {before:8.0f} | {now:6.0f} | {now / before:10.2f} | "
                    f"{int(difference.sum())} of {difference.numel()}"
                )


if __name__ == "__main__":
    main()
