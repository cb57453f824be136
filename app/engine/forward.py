"""The forward work beside the model: a batch of images in, predictions and maps out.

What the batcher (:mod:`app.engine.batcher`) runs, one group of images at a time, in its inference
thread (or, for short CPU batches, on the event loop): collate the images into one tensor on the
model's device, run the network under autocast in channels-last memory format (with the convolutions
packed for oneDNN on a CPU), rank the classes and, where asked, cut out each image's map and render its
heat image (:mod:`models.maps`), all on the device; then one copy to the host. Same-size batches can
replay all of that from CUDA graphs (:mod:`app.engine.cuda_graphs`).

Images of different sizes are zero-padded to the batch's largest height and width with their valid
sizes passed to the model, which masks the padding: the batched answer equals the single-image answer.
Sizes too different to pad cheaply go to separate groups (:func:`~app.engine.work.plan_groups`).
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from app.engine.cuda_graphs import GraphedBatch
from app.engine.work import (
    ForwardConfig,
    ImageWork,
    MapKind,
    MapRequest,
    Prediction,
    plan_groups,
    rank_classes,
)
from app.errors import GlimpseError, Overloaded
from app.runtime.device import Precision, precision_name
from models.attention_net import AttentionNet, AttentionOutput, grid_mask, output_size
from models.checkpoint import Preprocessing
from models.domain import DomainScorer
from models.maps import render_heatmaps
from models.packing import prepare_cpu_convolutions
from models.preprocessing import normalize_pixels

logger = logging.getLogger("glimpse.engine")

# Heat images up to this size are rendered on the model's device, a batch at a time; larger ones in the
# decode pool, so that resampling a 4096² map never holds up the next forward pass.
RENDER_IN_BATCH_MAX_PIXELS = 512 * 512
_KINDS: tuple[MapKind, ...] = ("evidence", "attention")
ESTIMATE_PASSES = 3  # the cost estimate is the quickest of these, so one preempted pass does not skew it


class ForwardWork:
    """The model on its device, and the batch work the batcher hands it (module docstring)."""

    def __init__(
        self,
        model: AttentionNet,
        preprocessing: Preprocessing,
        device: torch.device,
        config: ForwardConfig,
        domain: DomainScorer | None = None,
    ) -> None:
        self.model = model
        self.domain = domain.to(device) if domain is not None else None
        self.preprocessing = preprocessing
        self.device = device
        self.config = config
        if config.channels_last:
            # Module.to accepts memory_format at run time; torch's stubs omit it.
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if device.type == "cpu":
            # Bitwise the same answers under bfloat16 and less CPU per pass (``python -m bench.inprocess``;
            # bench/NOTES.md, "Convolutions packed for oneDNN"). Not measured on a GPU.
            prepare_cpu_convolutions(self.model, config.amp_dtype)
        self._graphed = (
            GraphedBatch[MapKind](self._same_size_work, device, config.channels_last)
            if device.type == "cuda" and config.cuda_graphs
            else None
        )

    @property
    def precision(self) -> Precision:
        """The arithmetic of the forward pass, as /models reports it."""
        return precision_name(self.config.amp_dtype)

    # -- what the batcher calls --------------------------------------------------------------------
    def split(self, work: list[ImageWork]) -> list[list[int]]:
        """Groups of a batch's images to run one forward pass each (:func:`~app.engine.work.plan_groups`)."""
        sizes = [(int(item.pixels.shape[0]), int(item.pixels.shape[1])) for item in work]
        return plan_groups(sizes, self.config.max_batch_pixels)

    def run(self, work: list[ImageWork]) -> list[Prediction | GlimpseError]:
        """One group's predictions; when the device runs out of memory, retried in halves, down to
        single images. An image that does not fit alone gets :class:`Overloaded` (503); the thread and
        the rest of the batch carry on."""
        try:
            return list(
                self.forward_batch(
                    [item.pixels for item in work],
                    [item.top_k for item in work],
                    [item.map_request for item in work],
                )
            )
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(work) == 1:
                logger.warning("out of memory on a single image; answering 503")
                return [Overloaded("out of device memory for this image; retry later", {"Retry-After": "1"})]
            logger.warning("out of memory on a batch of %d; retrying in halves", len(work))
            half = len(work) // 2
            return self.run(work[:half]) + self.run(work[half:])

    def warm_up(self, channels: int, image_size: int, max_batch_size: int) -> float:
        """Run each power-of-two batch shape once (oneDNN/cuDNN kernels, allocator), record the CUDA
        graphs, and measure the cost of a pixel; synchronously, on the thread that will run batches.

        Returns:
            Seconds per pixel of the largest batch, its kernels built: the batcher's cost estimate. A
            pass's work grows with its pixels, so it holds roughly for larger images too (within 2×
            from 256² to 2048² on a 2-core VM; ``python -m bench.engine_overhead --scaling``).
        """
        batch_size = 1
        while True:
            images = [torch.zeros(image_size, image_size, channels, dtype=torch.uint8)] * batch_size
            # One map puts the render kernels and this size's sampling grid on the device beforehand.
            maps: list[MapRequest | None] = [MapRequest("evidence") if batch_size == 1 else None] * batch_size
            self.forward_batch(images, [1] * batch_size, maps)
            if batch_size >= max_batch_size:
                break
            batch_size = min(batch_size * 2, max_batch_size)
        seconds = float("inf")  # the largest batch again, its kernels built: the cost estimate
        for _ in range(ESTIMATE_PASSES):
            started = time.perf_counter()
            self.forward_batch(images, [1] * batch_size, [None] * batch_size)
            seconds = min(seconds, time.perf_counter() - started)
        seconds_per_pixel = seconds / (batch_size * image_size * image_size)
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
        return seconds_per_pixel

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
            scores, indices, domain, *map_outputs = self._to_host(*work)
            predictions = self._predictions(scores, indices, domain, top_ks)
            if map_outputs:
                targets, grids, heats = map_outputs
                self._attach_maps(predictions, map_requests, targets, list(grids), list(heats.numpy()))
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
            scores and indices (B, K), best first, and in-domain scores (B,); with a map also targets
            (B,), grids (B, h, w) float32 and heat images (B, H, W) uint8.
        """
        output, scores, indices = self._ranked(x, None)
        domain = self._domain_scores(output, None, scores, indices)
        if kind is None:
            return scores, indices, domain
        assert requested is not None
        targets = self._targets(requested, indices)
        grids = self._map(output, targets, kind)
        heats = render_heatmaps(grids, x.shape[-2], x.shape[-1], self.model.config.feature_stride)
        return scores, indices, domain, targets, grids, heats

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
        output, scores, indices = self._ranked(x, input_size)
        domain = self._domain_scores(output, input_size, scores, indices)
        if requested is None:
            scores, indices, domain = self._to_host(scores, indices, domain)
            return self._predictions(scores, indices, domain, top_ks)
        targets = self._targets(requested, indices)
        empty = targets.new_zeros(0)
        maps = {kind: self._map(output, targets, kind) if kind in kinds else empty for kind in _KINDS}
        groups = self._render_groups(maps, map_requests, sizes)
        scores, indices, domain, targets, maps["evidence"], maps["attention"], *heats = self._to_host(
            scores, indices, domain, targets, maps["evidence"], maps["attention"], *(h for _, h in groups)
        )
        grids: list[Tensor | None] = [None] * len(sizes)
        for i, request in enumerate(map_requests):
            if request is not None:
                grid_height, grid_width = self._grid_size(sizes[i])
                grids[i] = maps[request.kind][i, :grid_height, :grid_width]
        heat_images: list[NDArray[np.uint8] | None] = [None] * len(sizes)
        for (members, _), heat in zip(groups, heats, strict=True):
            for i, image_heat in zip(members, heat.numpy(), strict=True):
                heat_images[i] = image_heat
        predictions = self._predictions(scores, indices, domain, top_ks)
        self._attach_maps(predictions, map_requests, targets, grids, heat_images)
        return predictions

    # -- the steps both paths share ----------------------------------------------------------------
    def _ranked(self, x: Tensor, input_size: Tensor | None) -> tuple[AttentionOutput, Tensor, Tensor]:
        """The forward pass under autocast, and every class ranked by probability, best first."""
        with self._autocast():
            output = self.model(x, input_size)
        scores, indices = rank_classes(output.logits)
        return output, scores, indices

    def _domain_scores(
        self, output: AttentionOutput, input_size: Tensor | None, scores: Tensor, indices: Tensor
    ) -> Tensor:
        """Each image's in-domain score from what the pass computed, (B,); ones without a scorer."""
        if self.domain is None:
            return output.logits.new_ones(output.logits.shape[0], dtype=torch.float32)
        return self.domain.output_score(output, input_size, (scores[:, 0], indices[:, 0]))

    @staticmethod
    def _targets(requested: Tensor, indices: Tensor) -> Tensor:
        """Each image's map class: the requested one, or its top class where none was (-1)."""
        return torch.where(requested >= 0, requested, indices[:, 0])

    @staticmethod
    def _map(output: AttentionOutput, targets: Tensor, kind: MapKind) -> Tensor:
        """The batch's maps of one kind over the (padded) feature grid, (B, h, w) float32."""
        return (output.evidence(targets) if kind == "evidence" else output.attention).float()

    @staticmethod
    def _attach_maps(
        predictions: list[Prediction],
        map_requests: list[MapRequest | None],
        targets: Tensor,
        grids: list[Tensor | None],
        heats: list[NDArray[np.uint8] | None],
    ) -> None:
        """Give each prediction that asked for a map its target class, grid and heat image (host copies)."""
        for prediction, request, target, grid, heat in zip(
            predictions, map_requests, targets.tolist(), grids, heats, strict=True
        ):
            if request is not None:
                prediction.target = target
                prediction.grid = grid
                prediction.heat = heat

    @staticmethod
    def _predictions(scores: Tensor, indices: Tensor, domain: Tensor, top_ks: list[int]) -> list[Prediction]:
        """Each image's top-k from the host copies of the whole ranking, with its in-domain score."""
        most = max(top_ks)
        scores_list, indices_list = scores[:, :most].tolist(), indices[:, :most].tolist()
        return [
            Prediction(index_row[:k], score_row[:k], domain_score)
            for index_row, score_row, domain_score, k in zip(
                indices_list, scores_list, domain.tolist(), top_ks, strict=True
            )
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
        :func:`~models.maps.render_heatmaps`); on a GPU this costs the host nothing but the copy of
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
