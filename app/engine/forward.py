"""The dynamic batcher: concurrent requests' images share one forward pass.

Requests put images on a bounded queue and await futures. One asyncio task forms batches: it takes up
to ``max_batch_size`` images, waiting at most ``max_batch_delay_ms`` after the first one — and only
while more images are expected (below), so a lone request is never held back. The forward pass runs
under ``torch.inference_mode`` in one of two places:

* In ONE dedicated inference thread (torch's intra-op pool gives it this worker's share of the
  cores): always on a GPU, and on a CPU for batches expected to take longer than
  ``inline_max_seconds``. While it runs, the event loop keeps accepting and decoding, and the next
  batch is already queued when the thread comes back. Images still being decoded are expected.
* On a CPU, on the event loop itself for the other batches, when ``inline_max_seconds`` is above 0
  (the service sets it only for a worker with one core to itself): a small batch's hand-off to the
  thread and back, with the GIL changing hands, cost more CPU than it saved (``bench/HISTORY.md``).
  Nothing arrives during an inline pass, so the clients it answers send their next requests just
  after it: the next batch waits for as many images as the inline one had.

Images of different sizes are zero-padded to the batch's largest height and width with their valid
sizes passed to the model, which masks the padding: the batched answer equals the single-image answer.
Sizes too different to pad cheaply go to separate forward passes (:func:`plan_groups`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from app.engine.cuda_graphs import GraphedBatch
from app.errors import DeadlineExceeded, ModelNotReady, Overloaded
from app.pipeline.imaging import render_heatmaps
from app.runtime.device import Precision, precision_name
from app.runtime.metrics import Metrics
from models.attention_net import AttentionNet, grid_mask, output_size
from models.checkpoint import Preprocessing
from models.packing import prepare_cpu_convolutions
from models.preprocessing import normalize_pixels

logger = logging.getLogger("glimpse.engine")

MapKind = Literal["evidence", "attention"]
PAD_WASTE_LIMIT = 2.0  # pad an image only up to 2× its own pixels
# Heat images up to this size are rendered on the model's device, a batch at a time; larger ones in the
# decode pool, so that resampling a 4096² map never holds up the next forward pass.
RENDER_IN_BATCH_MAX_PIXELS = 512 * 512


@dataclass(slots=True, frozen=True)
class MapRequest:
    """Which map to return with a prediction: ``target`` is a class index, None for the top class."""

    kind: MapKind
    target: int | None = None


@dataclass(slots=True)
class Prediction:
    """The model's answer for one image.

    Attributes:
        indices: Class indices of the top-k scores, best first.
        scores: Their softmax probabilities.
        target: The class the map explains (None when no map was asked for).
        grid: The requested map over the valid feature grid, (h, w) float32 on the CPU.
        heat: The map resampled onto the input's pixels and scaled to 0…255 (negative evidence shown
            as 0), (H, W) uint8 — what the heatmap PNG shows; None for images larger than
            :data:`RENDER_IN_BATCH_MAX_PIXELS`, which the predictor renders itself.
    """

    indices: list[int]
    scores: list[float]
    target: int | None = None
    grid: Tensor | None = None
    heat: NDArray[np.uint8] | None = None


@dataclass(slots=True, eq=False)
class _Job:
    pixels: Tensor
    top_k: int
    map_request: MapRequest | None
    deadline: float
    future: asyncio.Future[Prediction]
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 32
    max_batch_delay_ms: float = 2.0
    max_queue_size: int = 1024
    max_batch_pixels: int = 4096 * 4096  # padded pixels per forward pass; one larger image runs alone
    amp_dtype: torch.dtype | None = None  # autocast dtype on the model's device; None runs float32
    channels_last: bool = True
    inline_max_seconds: float = 0.02  # CPU only: passes expected to be this short run on the event loop
    cuda_graphs: bool = False  # CUDA only: replay same-size batches from graphs (app.engine.cuda_graphs)


def rank_classes(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Every class's softmax probability, best first, with the class indices; ties keep class order."""
    ranked = torch.softmax(logits.float(), dim=1).sort(dim=1, descending=True, stable=True)
    return ranked.values, ranked.indices


def plan_groups(sizes: list[tuple[int, int]], max_batch_pixels: int) -> list[list[int]]:
    """Split a batch into groups that are cheap to pad together, returning indices into ``sizes``.

    Greedy over images sorted by area, largest first: an image joins the open group while padding it
    to the group's height × width costs at most :data:`PAD_WASTE_LIMIT` × its own pixels (it is the
    smallest member, so no member is padded more) and the padded group fits ``max_batch_pixels``.
    """
    order = sorted(range(len(sizes)), key=lambda i: sizes[i][0] * sizes[i][1], reverse=True)
    groups: list[list[int]] = []
    height = width = 0
    for index in order:
        h, w = sizes[index]
        padded_height, padded_width = max(height, h), max(width, w)
        padded = padded_height * padded_width
        if (
            groups
            and padded <= PAD_WASTE_LIMIT * h * w
            and padded * (len(groups[-1]) + 1) <= max_batch_pixels
        ):
            groups[-1].append(index)
            height, width = padded_height, padded_width
        else:
            groups.append([index])
            height, width = h, w
    return groups


class InferenceEngine:
    """Owns the model, the queue, the batching task and the inference thread."""

    def __init__(
        self,
        model: AttentionNet,
        preprocessing: Preprocessing,
        device: torch.device,
        config: EngineConfig,
        metrics: Metrics,
    ) -> None:
        self.model = model
        self.preprocessing = preprocessing
        self.device = device
        self.config = config
        self.metrics = metrics
        self._queue: deque[_Job] = deque()
        self._wakeup = asyncio.Event()  # set when images arrive
        self._idle = asyncio.Event()  # set while the queue is empty and no batch runs
        self._idle.set()
        self._incoming = 0  # images being decoded by requests that will submit them soon
        self._inline_batch = 0  # images in the last batch if it ran on the event loop, else 0
        self._inline_max_pixels = 0  # a batch of at most this many pixels runs inline; set by the warm-up
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glimpse-inference")
        if config.channels_last:
            # Module.to accepts memory_format at run time; torch's stubs omit it.
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if device.type == "cpu":
            # Bitwise the same answers under bfloat16 and less CPU per pass
            # (bench/results/20261129-packed-convolutions-cpu.txt). Not measured on a GPU.
            prepare_cpu_convolutions(self.model, config.amp_dtype)
        self._graphed = (
            GraphedBatch[MapKind](self._same_size_work, device, config.channels_last)
            if device.type == "cuda" and config.cuda_graphs
            else None
        )

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._batch_loop(), name="glimpse-batcher")

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Refuse new work, let queued images finish (bounded), then stop the task and the thread."""
        self._closing = True
        with suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout_s):
                await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(ModelNotReady("the service is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def warm_up(self, channels: int, image_size: int, max_batch_size: int) -> None:
        """Run each power-of-two batch shape once (oneDNN/cuDNN kernels, allocator) on the model thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._warm_up, channels, image_size, max_batch_size)

    def _warm_up(self, channels: int, image_size: int, max_batch_size: int) -> None:
        batch_size = 1
        while True:
            images = [torch.zeros(image_size, image_size, channels, dtype=torch.uint8)] * batch_size
            # One map puts the render kernels and this size's sampling grid on the device beforehand.
            maps: list[MapRequest | None] = [MapRequest("evidence") if batch_size == 1 else None] * batch_size
            self.forward_batch(images, [1] * batch_size, maps)
            if batch_size >= max_batch_size:
                break
            batch_size = min(batch_size * 2, max_batch_size)
        if self.device.type == "cpu" and self.config.inline_max_seconds > 0:
            started = time.perf_counter()  # the largest batch again, its kernels built: the cost estimate
            self.forward_batch(images, [1] * batch_size, [None] * batch_size)
            seconds_per_pixel = (time.perf_counter() - started) / (batch_size * image_size * image_size)
            self._inline_max_pixels = int(self.config.inline_max_seconds / seconds_per_pixel)
        sizes = [(image_size, image_size), (image_size + 3, image_size + 5)]  # the padded path too
        padded = [torch.zeros(h, w, channels, dtype=torch.uint8) for h, w in sizes]
        self.forward_batch(padded, [1, 1], [None, None])
        if self._graphed is not None:
            variants: list[MapKind | None] = [None]
            if image_size * image_size <= RENDER_IN_BATCH_MAX_PIXELS:
                variants += ["evidence", "attention"]
            try:
                self._graphed.capture(channels, image_size, image_size, max_batch_size, variants)
            except RuntimeError as exc:  # a driver or build that cannot record them: serve without
                logger.warning("CUDA graphs not recorded, serving without them: %s", exc)
                self._graphed = None

    # -- submission --------------------------------------------------------------------------------
    @contextmanager
    def expecting(self, count: int) -> Iterator[None]:
        """Tell the batcher that ``count`` images are being decoded and will be submitted shortly.

        Raises:
            Overloaded: Queued plus decoding images would exceed the queue size: refused before any
                decoding, so a burst far above capacity gets its 503s at once.
        """
        if len(self._queue) + self._incoming + count > self.config.max_queue_size:
            raise Overloaded("the inference queue is full; retry shortly", headers={"Retry-After": "1"})
        self._incoming += count
        try:
            yield
        finally:
            self._incoming -= count

    @property
    def precision(self) -> Precision:
        """The arithmetic of the forward pass, as /models reports it."""
        return precision_name(self.config.amp_dtype)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def predict(
        self, images: list[Tensor], top_k: int, map_request: MapRequest | None, deadline: float
    ) -> list[Prediction]:
        """Queue images (all or none) and wait for their predictions.

        Args:
            images: Pixels in the card's colour mode, (H, W, C) uint8 each, as decoding gives them.
            top_k: Classes to return per image.
            map_request: Which map to attach, or None.
            deadline: A ``time.perf_counter`` value.

        Raises:
            ModelNotReady: The engine is shutting down.
            Overloaded: The queue has no room for all the images.
            DeadlineExceeded: ``deadline`` (a ``time.perf_counter`` value) passed while queued.
        """
        if self._closing:
            raise ModelNotReady("the service is shutting down", headers={"Retry-After": "1"})
        if len(self._queue) + len(images) > self.config.max_queue_size:
            raise Overloaded("the inference queue is full; retry shortly", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        jobs = [_Job(image, top_k, map_request, deadline, loop.create_future()) for image in images]
        self._queue.extend(jobs)
        self._idle.clear()
        self.metrics.queue_depth.set(len(self._queue))
        self._wakeup.set()
        try:
            if len(jobs) == 1:  # most requests: no gathering future and callbacks to set up
                return [await jobs[0].future]
            return list(await asyncio.gather(*(job.future for job in jobs)))
        finally:
            for job in jobs:  # a caller that gave up (timeout, disconnect) frees its queue slots
                job.future.cancel()

    # -- batching ----------------------------------------------------------------------------------
    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
            flush_at = self._queue[0].enqueued_at + self.config.max_batch_delay_ms / 1000
            while len(self._queue) < self.config.max_batch_size and (
                self._incoming > 0 or len(self._queue) < self._inline_batch
            ):
                remaining = flush_at - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._wakeup.wait()
                except TimeoutError:
                    break
            jobs = self._take_batch()
            if not jobs:
                continue
            inline = sum(job.pixels.shape[0] * job.pixels.shape[1] for job in jobs) <= self._inline_max_pixels
            self._inline_batch = len(jobs) if inline else 0
            try:
                if inline:
                    results = self._run_jobs(jobs)
                else:
                    results = await loop.run_in_executor(self._executor, self._run_jobs, jobs)
            except Exception as exc:
                logger.exception("forward pass failed for a batch of %d", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(jobs, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, Overloaded):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _take_batch(self) -> list[_Job]:
        now = time.perf_counter()
        jobs: list[_Job] = []
        while self._queue and len(jobs) < self.config.max_batch_size:
            job = self._queue.popleft()
            if job.future.done():
                continue
            if job.deadline <= now:
                job.future.set_exception(
                    DeadlineExceeded("the request's deadline passed while it was queued")
                )
                continue
            self.metrics.queue_wait_seconds.observe(now - job.enqueued_at)
            jobs.append(job)
        self.metrics.queue_depth.set(len(self._queue))
        return jobs

    # -- the forward pass (inference thread or, for short CPU batches, the event loop) ---------------
    def _run_jobs(self, jobs: list[_Job]) -> list[Prediction | Overloaded]:
        started = time.perf_counter()
        sizes = [(int(job.pixels.shape[0]), int(job.pixels.shape[1])) for job in jobs]
        results: list[Prediction | Overloaded | None] = [None] * len(jobs)
        for group in plan_groups(sizes, self.config.max_batch_pixels):
            predictions = self._forward_or_split([jobs[i] for i in group])
            for index, prediction in zip(group, predictions, strict=True):
                results[index] = prediction
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        assert all(result is not None for result in results)
        return [result for result in results if result is not None]

    def _forward_or_split(self, jobs: list[_Job]) -> list[Prediction | Overloaded]:
        """Run the jobs; when the device runs out of memory, retry in halves, down to single images.

        An image that does not fit alone gets :class:`Overloaded` (503); the thread and the rest of the
        batch carry on.
        """
        try:
            return list(
                self.forward_batch(
                    [job.pixels for job in jobs],
                    [job.top_k for job in jobs],
                    [job.map_request for job in jobs],
                )
            )
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(jobs) == 1:
                logger.warning("out of memory on a single image; answering 503")
                return [Overloaded("out of device memory for this image; retry later", {"Retry-After": "1"})]
            logger.warning("out of memory on a batch of %d; retrying in halves", len(jobs))
            half = len(jobs) // 2
            return self._forward_or_split(jobs[:half]) + self._forward_or_split(jobs[half:])

    @torch.inference_mode()
    def forward_batch(
        self, images: list[Tensor], top_ks: list[int], map_requests: list[MapRequest | None]
    ) -> list[Prediction]:
        """One forward pass over images of possibly different sizes, synchronously.

        The batcher runs it in the inference thread; the in-process benchmarks (``bench/``) call it
        directly, to time the same work without HTTP.
        """
        x, input_size = self._collate(images)
        kinds = {request.kind for request in map_requests if request is not None}
        requested = self._requested_targets(map_requests) if kinds else None
        sizes = [(int(image.shape[0]), int(image.shape[1])) for image in images]
        height, width = sizes[0]
        if (
            input_size is None
            and len(kinds) <= 1
            and (not kinds or height * width <= RENDER_IN_BATCH_MAX_PIXELS)
        ):
            kind = next(iter(kinds), None)
            work = self._graphed(x, requested, kind) if self._graphed is not None else None
            if work is None:
                work = self._same_size_work(x, requested, kind)
            scores, indices, *map_outputs = self._to_host(*work)
            predictions = self._predictions(scores, indices, top_ks)
            if map_outputs:
                targets, grids, heats = map_outputs
                for i, (request, target, heat) in enumerate(
                    zip(map_requests, targets.tolist(), heats.numpy(), strict=True)
                ):
                    if request is not None:
                        predictions[i].target = target
                        predictions[i].grid = grids[i]
                        predictions[i].heat = heat
            return predictions
        return self._mixed_work(x, input_size, requested, kinds, sizes, top_ks, map_requests)

    def _same_size_work(
        self, x: Tensor, requested: Tensor | None, kind: MapKind | None
    ) -> tuple[Tensor, ...]:
        """The device work of a batch of images of one size, none padded, wanting one kind of map or none.

        What the CUDA graphs record (:class:`~app.engine.cuda_graphs.GraphedBatch`), and what runs eagerly
        without them: the forward pass, the classes ranked by probability and, with a map, each image's
        target class, its map over the feature grid and its heat image.

        Returns:
            scores and indices (B, K), best first; with a map also targets (B,), grids (B, h, w) float32
            and heat images (B, H, W) uint8.
        """
        with self._autocast():
            output = self.model(x)
        scores, indices = rank_classes(output.logits)
        if kind is None:
            return scores, indices
        assert requested is not None
        targets = torch.where(requested >= 0, requested, indices[:, 0])
        grids = (output.evidence(targets) if kind == "evidence" else output.attention).float()
        heats = render_heatmaps(grids, x.shape[-2], x.shape[-1], self.model.config.feature_stride)
        return scores, indices, targets, grids, heats

    def _mixed_work(
        self,
        x: Tensor,
        input_size: Tensor | None,
        requested: Tensor | None,
        kinds: set[MapKind],
        sizes: list[tuple[int, int]],
        top_ks: list[int],
        map_requests: list[MapRequest | None],
    ) -> list[Prediction]:
        """Predictions for a padded batch, or one wanting both kinds of map or maps of large images."""
        with self._autocast():
            output = self.model(x, input_size)
        scores, indices = rank_classes(output.logits)
        if requested is None:
            scores, indices = self._to_host(scores, indices)
            return self._predictions(scores, indices, top_ks)
        targets = torch.where(requested >= 0, requested, indices[:, 0])
        empty = targets.new_zeros(0)
        maps: dict[MapKind, Tensor] = {
            "evidence": output.evidence(targets).float() if "evidence" in kinds else empty,
            "attention": output.attention.float() if "attention" in kinds else empty,
        }
        groups = self._render_groups(maps, map_requests, sizes)
        scores, indices, targets, maps["evidence"], maps["attention"], *heats = self._to_host(
            scores, indices, targets, maps["evidence"], maps["attention"], *(heat for _, heat in groups)
        )
        predictions = self._predictions(scores, indices, top_ks)
        for i, (request, target) in enumerate(zip(map_requests, targets.tolist(), strict=True)):
            if request is not None:
                grid_height, grid_width = self._grid_size(sizes[i])
                predictions[i].target = target
                predictions[i].grid = maps[request.kind][i, :grid_height, :grid_width]
        for (members, _), heat in zip(groups, heats, strict=True):
            for i, image_heat in zip(members, heat.numpy(), strict=True):
                predictions[i].heat = image_heat
        return predictions

    @staticmethod
    def _predictions(scores: Tensor, indices: Tensor, top_ks: list[int]) -> list[Prediction]:
        """Each image's top-k from the host copies of the whole ranking."""
        most = max(top_ks)
        scores_list, indices_list = scores[:, :most].tolist(), indices[:, :most].tolist()
        return [
            Prediction(index_row[:k], score_row[:k])
            for index_row, score_row, k in zip(indices_list, scores_list, top_ks, strict=True)
        ]

    def _autocast(self) -> torch.autocast | nullcontext[None]:
        """Autocast to the configured dtype on the model's device, with no cache of cast weights: a CUDA
        graph cannot keep a cast made while it was recorded, and each weight is used once a pass."""
        if self.config.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.config.amp_dtype, cache_enabled=False)

    def _requested_targets(self, map_requests: list[MapRequest | None]) -> Tensor:
        """Each map's requested class on the device, -1 for "the top class"; sent before the forward
        pass is queued, so the copy waits for nothing."""
        targets = torch.tensor(
            [-1 if request is None or request.target is None else request.target for request in map_requests]
        )
        if self.device.type == "cuda":
            return targets.pin_memory().to(self.device, non_blocking=True)
        return targets

    def _to_host(self, *tensors: Tensor) -> list[Tensor]:
        """The tensors on the CPU, after one wait for the device.

        On CUDA the copies queue behind the forward pass, then this thread sleeps on a blocking event.
        Any plain ``.cpu()`` would instead spin a core at 100 % for the whole pass — CUDA's default
        when a process has fewer contexts than the machine has cores — and with several workers
        sharing one GPU, those spinning threads take the cores the HTTP work needs.
        """
        if self.device.type != "cuda":
            return list(tensors)
        copies = [tensor.to("cpu", non_blocking=True) for tensor in tensors]
        done = torch.cuda.Event(blocking=True)  # type: ignore[no-untyped-call]
        done.record()
        done.synchronize()
        return copies

    def _collate(self, images: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        """Normalise (H, W, C) uint8 images into one batch on the device; valid sizes when padded.

        Pixels travel as bytes, in one (pinned, on CUDA) copy, and are normalised on the device a whole
        batch at once. Images of different sizes are padded as bytes and zeroed beyond their valid
        region after normalising: zero in the normalised space is what the network's masking expects.
        """
        pin = self.device.type == "cuda"
        spec = self.preprocessing
        height = max(int(image.shape[0]) for image in images)
        width = max(int(image.shape[1]) for image in images)
        if all(image.shape[0] == height and image.shape[1] == width for image in images):
            stacked = torch.stack(images)
            batch = normalize_pixels(stacked.pin_memory() if pin else stacked, spec, self.device)
            input_size = None
        else:
            padded = torch.zeros(len(images), height, width, spec.channels, dtype=torch.uint8)
            for i, image in enumerate(images):
                padded[i, : image.shape[0], : image.shape[1]] = image
            sizes = torch.tensor([[int(image.shape[0]), int(image.shape[1])] for image in images])
            if pin:
                padded, sizes = padded.pin_memory(), sizes.pin_memory()
            input_size = sizes.to(self.device, non_blocking=pin)
            # Zero beyond each image after normalising, as the masking expects: one copy, no per-image ops.
            batch = normalize_pixels(padded, spec, self.device) * grid_mask(input_size, height, width)
        memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        return batch.contiguous(memory_format=memory_format), input_size

    def _render_groups(
        self, maps: dict[MapKind, Tensor], map_requests: list[MapRequest | None], sizes: list[tuple[int, int]]
    ) -> list[tuple[list[int], Tensor]]:
        """Heat images of the requested maps, rendered on the device with one call per image size.

        Each map is cut to its image's valid feature grid and resampled onto the image's pixels (see
        :func:`~app.pipeline.imaging.render_heatmaps`); on a GPU this costs the host nothing but the copy of
        the (B, H, W) uint8 result. Images above :data:`RENDER_IN_BATCH_MAX_PIXELS` are left to the
        predictor, so that resampling a 4096² map never holds up the next forward pass.

        Returns:
            For each size: the indices of its images and their (n, H, W) uint8 heat images.
        """
        by_size: dict[tuple[int, int], list[tuple[int, MapKind]]] = {}
        for i, request in enumerate(map_requests):
            if request is not None and sizes[i][0] * sizes[i][1] <= RENDER_IN_BATCH_MAX_PIXELS:
                by_size.setdefault(sizes[i], []).append((i, request.kind))
        groups = []
        for (height, width), members in by_size.items():
            grid_height, grid_width = self._grid_size((height, width))
            grids = torch.stack([maps[kind][i, :grid_height, :grid_width] for i, kind in members])
            heats = render_heatmaps(grids, height, width, self.model.config.feature_stride)
            groups.append(([i for i, _ in members], heats))
        return groups

    def _grid_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The valid feature grid of an image of this size, known on the host without a device copy."""
        downsamplings = self.model.config.num_downsamplings
        return int(output_size(size[0], downsamplings)), int(output_size(size[1], downsamplings))
