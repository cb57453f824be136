"""The inference engine: the batcher (:mod:`app.engine.batcher`) running the forward work
(:mod:`app.engine.forward`), behind the few calls the request pipeline makes.

A request is admitted with its images' declared sizes before they are decoded
(:meth:`InferenceEngine.admit`), then submits the decoded pixels through its admission::

    with engine.admit(pixel_counts, deadline) as admission:
        pixels = decode(...)
        predictions = await admission.predict(pixels, top_k, map_request)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from app.engine.batcher import Admission, Batcher, BatchPolicy
from app.engine.forward import ForwardWork
from app.engine.work import ForwardConfig, ImageWork, MapRequest, Prediction
from app.runtime.device import Precision
from app.runtime.metrics import Metrics
from models.attention_net import AttentionNet
from models.checkpoint import Preprocessing
from models.domain import DomainScorer

if TYPE_CHECKING:
    from app.config import Settings


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's two halves' configurations; :meth:`from_settings` is the one place they are built."""

    batching: BatchPolicy
    forward: ForwardConfig

    @classmethod
    def from_settings(cls, settings: Settings, amp_dtype: torch.dtype | None) -> EngineConfig:
        """The configuration the service's settings describe, with the AMP dtype chosen for the device."""
        return cls(
            batching=BatchPolicy(
                max_batch_size=settings.max_batch_size,
                max_batch_delay_ms=settings.max_batch_delay_ms,
                max_queue_size=settings.max_queue_size,
                max_inflight_cost=settings.inflight_pixels(),
                inline_max_seconds=settings.inline_forward_max_s(),
            ),
            forward=ForwardConfig(
                max_batch_pixels=settings.max_batch_pixels,
                amp_dtype=amp_dtype,
                channels_last=settings.channels_last,
                cuda_graphs=settings.cuda_graphs,
            ),
        )


class EngineAdmission:
    """A request admitted to the engine (:meth:`InferenceEngine.admit`); a context manager."""

    __slots__ = ("_admission",)

    def __init__(self, admission: Admission[ImageWork, Prediction]) -> None:
        self._admission = admission

    def __enter__(self) -> EngineAdmission:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._admission.__exit__(exc_type, exc, tb)

    async def predict(
        self, images: Sequence[Tensor], top_k: int, map_request: MapRequest | None
    ) -> list[Prediction]:
        """Queue the request's decoded images (all or none) and wait for their predictions.

        Args:
            images: Pixels in the card's colour mode, (H, W, C) uint8 each, as decoding gives them.
            top_k: Classes to return per image.
            map_request: Which map to attach, or None.

        Raises:
            ModelNotReady: The engine is shutting down.
            DeadlineExceeded: The admission's deadline passed before the images ran.
            Overloaded: The device ran out of memory for an image alone.
        """
        work = [ImageWork(image, top_k, map_request) for image in images]
        return await self._admission.submit(work, [image.shape[0] * image.shape[1] for image in images])


class InferenceEngine:
    """The model, its forward work and the batcher that feeds it."""

    def __init__(
        self,
        model: AttentionNet,
        preprocessing: Preprocessing,
        device: torch.device,
        config: EngineConfig,
        metrics: Metrics,
        domain: DomainScorer | None = None,
    ) -> None:
        self.device = device
        self.config = config
        self.metrics = metrics
        self.forward = ForwardWork(model, preprocessing, device, config.forward, domain)
        # Inline passes save a thread hand-off on a CPU; a GPU pass never runs on the event loop.
        policy = config.batching if device.type == "cpu" else replace(config.batching, inline_max_seconds=0.0)
        self.batcher = Batcher[ImageWork, Prediction](self.forward.run, self.forward.split, policy, metrics)

    @property
    def precision(self) -> Precision:
        """The arithmetic of the forward pass, as /models reports it."""
        return self.forward.precision

    @property
    def queue_depth(self) -> int:
        return self.batcher.queue_depth

    async def warm_up(self, channels: int, image_size: int, max_batch_size: int) -> None:
        """Warm up every batch shape on the inference thread and give the batcher its cost estimate."""
        loop = asyncio.get_running_loop()
        seconds_per_pixel = await loop.run_in_executor(
            self.batcher.executor, self.forward.warm_up, channels, image_size, max_batch_size
        )
        self.batcher.calibrate(seconds_per_pixel)

    def start(self) -> None:
        self.batcher.start()

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Refuse new work, let queued images finish (bounded), then stop."""
        await self.batcher.stop(drain_timeout_s)

    def admit(self, pixel_counts: Sequence[int], deadline: float) -> EngineAdmission:
        """Admit a request by its images' declared pixel counts, before any is decoded.

        Args:
            pixel_counts: Width × height of each image, as its header declares.
            deadline: The request's deadline, a ``time.perf_counter`` value.

        Raises:
            ModelNotReady: The engine is shutting down.
            PayloadTooLarge: (413) The images are more pixels than the engine holds at once, or would
                take longer than the time left even on an idle worker.
            Overloaded: (503, Retry-After) The queue is full, or the work already admitted leaves no
                room or no time for them.
        """
        return EngineAdmission(self.batcher.admit(pixel_counts, deadline))

    async def predict(
        self, images: Sequence[Tensor], top_k: int, map_request: MapRequest | None, deadline: float
    ) -> list[Prediction]:
        """Admit and predict in one step, for callers with the pixels already decoded."""
        with self.admit([image.shape[0] * image.shape[1] for image in images], deadline) as admission:
            return await admission.predict(images, top_k, map_request)
