"""CUDA graphs of a batch's device work: one launch per graph instead of one per kernel.

The bundled model's forward pass is a few dozen small kernels, and ranking the classes and rendering
the heat images add a dozen more. On a GPU the host spends longer launching them than the GPU spends
running them. A CUDA graph records the launches once and replays them with one call (Nvidia's CUDA
Programming Guide, "CUDA Graphs"; ``torch.cuda.graph``).

:class:`GraphedBatch` records a caller's work function — pixels and requested classes in, tensors out —
once per batch size bucket (1, 2, 4, … up to the largest batch) and per variant (predictions only, or
with one kind of map), for the warm-up image size. Nothing in the work mixes the images of a batch, so
a batch of n images can run in two ways, and :func:`cheapest_plan` picks, for every n, the one that
the graphs' own GPU times measured at start-up say is quicker:

* pad: replay the smallest bucket that holds n, its spare rows left with whatever they held. One
  replay; best when a pass costs about the same whatever its batch (a small model, launch-bound).
* split: replay the buckets of n's binary digits (23 = 1 + 2 + 4 + 16), no spare rows. Best when a
  pass's cost grows with its rows (a large model or image, compute-bound), where padding 17 images to
  32 would nearly double the work.

Batches of any other image size or padded to a common size run eagerly, as without graphs.

All graphs share one memory pool, so their intermediate tensors take the memory of one graph rather
than of all of them. A graph's outputs stay allocated, so no graph recorded after it writes there; a
graph recorded before it may (its intermediates were free then). So a split replays its buckets in the
order they were recorded, smallest first, and every replay's outputs are copied before the next call.
The engine's single inference thread does exactly that.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor

Variant = TypeVar("Variant", bound=Hashable)
TIMED_REPLAYS = 5  # per graph at start-up, for the plans


def cheapest_plan(batch: int, seconds: Mapping[int, float]) -> list[int]:
    """The buckets to replay for a batch of ``batch`` images, smallest first: padded or split.

    Args:
        batch: Images in the batch, at most the largest bucket.
        seconds: GPU time of one replay of each bucket; the buckets include every power of two below
            the largest.
    """
    buckets = sorted(seconds)
    padded = [next(bucket for bucket in buckets if bucket >= batch)]
    split: list[int] = []
    remaining = batch
    for bucket in reversed(buckets):
        while bucket <= remaining:
            split.append(bucket)
            remaining -= bucket
    split.reverse()
    return min(padded, split, key=lambda plan: (sum(seconds[bucket] for bucket in plan), len(plan)))


@dataclass(slots=True)
class _Graph:
    graph: torch.cuda.CUDAGraph
    pixels: Tensor
    requested: Tensor
    outputs: tuple[Tensor, ...]


class GraphedBatch(Generic[Variant]):
    """A batch's device work replayed from CUDA graphs for same-size batches (module docstring).

    Args:
        work: (pixels (B, C, H, W), requested classes (B,), variant or None) → batch-first tensors.
        device: The CUDA device.
        channels_last: Whether the pixels arrive channels-last.
    """

    def __init__(
        self,
        work: Callable[[Tensor, Tensor, Variant | None], tuple[Tensor, ...]],
        device: torch.device,
        channels_last: bool,
    ) -> None:
        self.work = work
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._graphs: dict[tuple[int, int, int, int, Variant | None], _Graph] = {}
        # (batch, channels, height, width, variant) → the buckets to replay, smallest first
        self.plans: dict[tuple[int, int, int, int, Variant | None], list[int]] = {}
        self._pool: Any = None  # torch.cuda.graph_pool_handle()'s opaque handle
        self._side: torch.cuda.Stream | None = None

    def capture(
        self, channels: int, height: int, width: int, max_batch_size: int, variants: Sequence[Variant | None]
    ) -> None:
        """Record a graph for every bucket up to ``max_batch_size`` and every variant at this image size,
        time each one, and plan every batch size."""
        self._pool = self._pool or torch.cuda.graph_pool_handle()
        buckets = [1]
        while buckets[-1] < max_batch_size:
            buckets.append(min(buckets[-1] * 2, max_batch_size))
        for bucket in buckets:  # smallest first: the order a split replays them in
            for variant in variants:
                self._capture(bucket, channels, height, width, variant)
        torch.cuda.empty_cache()  # the warm-up passes' blocks; the graphs' pool is kept
        for variant in variants:
            seconds = {
                bucket: self._seconds(self._graphs[(bucket, channels, height, width, variant)])
                for bucket in buckets
            }
            for batch in range(1, max_batch_size + 1):
                self.plans[(batch, channels, height, width, variant)] = cheapest_plan(batch, seconds)

    def __call__(
        self, pixels: Tensor, requested: Tensor | None, variant: Variant | None
    ) -> tuple[Tensor, ...] | None:
        """The work's outputs for ``pixels`` (B, C, H, W) from the graphs, or None when none fits.

        The outputs may be views of the graphs' own tensors: copy them before the next call.
        """
        batch, channels, height, width = pixels.shape
        plan = self.plans.get((batch, channels, height, width, variant))
        if plan is None:
            return None
        parts = []
        start = 0
        for bucket in plan:
            rows = min(bucket, batch - start)
            graph = self._graphs[(bucket, channels, height, width, variant)]
            graph.pixels[:rows].copy_(pixels[start : start + rows])
            if requested is not None:
                graph.requested[:rows].copy_(requested[start : start + rows])
            graph.graph.replay()
            parts.append(tuple(output[:rows] for output in graph.outputs))
            start += rows
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(pieces) for pieces in zip(*parts, strict=True))

    def _capture(self, batch: int, channels: int, height: int, width: int, variant: Variant | None) -> None:
        # Plain tensors, not inference tensors: callers fill them in place inside inference mode or out.
        pixels = torch.zeros(batch, channels, height, width, device=self.device)
        pixels = pixels.contiguous(memory_format=self.memory_format)
        requested = torch.full((batch,), -1, dtype=torch.long, device=self.device)
        # One side stream for every graph: the caching allocator keeps blocks per stream.
        self._side = self._side or torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        self._side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode():
            with torch.cuda.stream(self._side):
                for _ in range(2):  # lazy initialisation and cuDNN's choices happen before recording
                    self.work(pixels, requested, variant)
            torch.cuda.current_stream(self.device).wait_stream(self._side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                outputs = self.work(pixels, requested, variant)
        self._graphs[(batch, channels, height, width, variant)] = _Graph(graph, pixels, requested, outputs)

    @staticmethod
    def _seconds(graph: _Graph) -> float:
        """GPU time of one replay, the median of :data:`TIMED_REPLAYS` after one untimed."""
        graph.graph.replay()
        times = []
        for _ in range(TIMED_REPLAYS):
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            graph.graph.replay()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)) / 1000)
        return sorted(times)[len(times) // 2]
