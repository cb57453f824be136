"""CUDA graphs of the forward pass: one launch per batch instead of one per kernel.

The bundled model's forward pass is a few dozen small kernels, and on a GPU the host spends longer
launching them than the GPU spends running them. A CUDA graph records the launches once and replays
them with one call (Nvidia's CUDA Programming Guide, "CUDA Graphs"; ``torch.cuda.graph``). A graph
is fixed to its input's shape, so :class:`GraphedForward` records one graph per batch size bucket —
1, 2, 4, … up to the largest batch — for the warm-up image size, and runs a batch of n images of that
size in the smallest bucket that holds it, its spare rows left with whatever they held. Nothing in
the network mixes the images of a batch, so the spare rows change no answer.
Batches of any other size or padded to a common size run eagerly, as without graphs.

Each graph's outputs are fixed tensors that its next replay overwrites, so the caller must be done
with them, copies queued, before it calls again. The engine's single inference thread does exactly
that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.attention_net import AttentionNet, AttentionOutput


@dataclass(slots=True)
class _Graph:
    graph: torch.cuda.CUDAGraph
    static_input: Tensor
    output: AttentionOutput


class GraphedForward:
    """The model's forward pass replayed from CUDA graphs for same-size batches (module docstring)."""

    def __init__(self, model: AttentionNet, amp_dtype: torch.dtype | None, channels_last: bool) -> None:
        self.model = model
        self.amp_dtype = amp_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._graphs: dict[tuple[int, int, int, int], _Graph] = {}
        self._buckets: list[int] = []

    def capture(self, channels: int, height: int, width: int, max_batch_size: int) -> None:
        """Record a graph for every bucket up to ``max_batch_size`` at this image size."""
        bucket = 1
        while True:
            self._capture(bucket, channels, height, width)
            if bucket >= max_batch_size:
                break
            bucket = min(bucket * 2, max_batch_size)
        self._buckets = sorted({key[0] for key in self._graphs})

    def __call__(self, x: Tensor) -> AttentionOutput | None:
        """The forward pass of ``x`` (B, C, H, W) from a graph, or None when no graph fits its shape."""
        batch, channels, height, width = x.shape
        bucket = next((size for size in self._buckets if size >= batch), None)
        graph = self._graphs.get((bucket, channels, height, width)) if bucket is not None else None
        if graph is None:
            return None
        graph.static_input[:batch].copy_(x)
        graph.graph.replay()
        out = graph.output
        return AttentionOutput(
            out.logits[:batch],
            out.attention[:batch],
            out.features[:batch],
            out.classifier_weight,
            out.valid_size[:batch],
        )

    def _capture(self, batch: int, channels: int, height: int, width: int) -> None:
        device = next(self.model.parameters()).device
        static_input = torch.zeros(batch, channels, height, width, device=device).contiguous(
            memory_format=self.memory_format
        )
        # Autocast's cache of cast weights must stay off while recording: a cached cast made inside the
        # graph would be freed memory outside it.
        autocast = torch.autocast(
            "cuda",
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
            cache_enabled=False,
        )
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), autocast:
            for _ in range(3):  # lazy initialisation and cuDNN's choices happen before recording
                self.model(static_input)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), autocast:
            output = self.model(static_input)
        self._graphs[(batch, channels, height, width)] = _Graph(graph, static_input, output)
