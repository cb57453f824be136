"""Service settings: one pydantic-settings class read from ``GLIMPSE_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.pipeline.core import Limits
from app.runtime.memory import TRIM_INTERVAL_S
from models.checkpoint import DEFAULT_MODEL_DIR


class Settings(BaseSettings):
    """Everything an operator can tune; docs/configuration.md lists the same fields (a test checks it)."""

    model_config = SettingsConfigDict(env_prefix="GLIMPSE_", case_sensitive=False, extra="ignore")

    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="Directory with card.json and model.safetensors.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when available.")
    max_batch_size: int = Field(32, ge=1, le=1024, description="Most images in one forward pass.")
    max_batch_delay_ms: float = Field(
        2.0, ge=0, le=1000, description="Longest wait for more images once the first one is queued."
    )
    max_queue_size: int = Field(
        1024, ge=1, description="Images waiting for the model; past it requests get 503 at once."
    )
    request_timeout_s: float = Field(
        10.0, gt=0, description="Per-request deadline; past it the answer is 504."
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest request body (413 past it).")
    max_image_pixels: int = Field(
        4096 * 4096, ge=256, description="Largest declared width×height, checked before decoding (413)."
    )
    min_image_size: int | None = Field(
        None, ge=1, description="Smallest accepted width/height; default: the card's preprocessing.min_size."
    )
    max_images_per_request: int = Field(32, ge=1, description="Most images in one request (413 past it).")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated keys; empty means no authentication."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS; empty disables CORS."
    )
    shutdown_drain_s: float = Field(
        0.0, ge=0, le=300,
        description="After SIGTERM, seconds to keep serving while /health/ready answers 503.",
    )  # fmt: skip
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    torch_threads: int = Field(
        0, ge=0, description="Intra-op threads for the model; 0 means this worker's share of the cores."
    )
    decode_threads: int = Field(
        0, ge=0, description="Threads decoding and encoding images; 0 means this worker's share of the cores."
    )
    workers: int = Field(
        1,
        ge=1,
        validation_alias="WEB_CONCURRENCY",
        description="uvicorn's worker processes (uvicorn reads WEB_CONCURRENCY itself); the cores are "
        "shared out among them.",
    )
    amp_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Autocast dtype for the forward pass; float32 disables AMP. auto: bfloat16 on CUDA "
        "and on CPUs with native bf16 matrix units (AMX), float32 elsewhere.",
    )
    channels_last: bool = Field(True, description="Run the convolutions in channels-last memory format.")
    inline_forward_max_ms: float = Field(
        20.0,
        ge=0,
        le=1000,
        description="On a CPU worker with one core to itself (workers ≥ cores), forward passes the "
        "warm-up's timing puts at most this long run on the event loop instead of the inference thread, "
        "saving the hand-off; 0 runs every pass in the thread.",
    )
    cudnn_benchmark: bool = Field(
        False,
        description="Let cuDNN time its kernels for every new input shape (batch size × height × width) "
        "on first sight. Each new shape then stalls its batch by up to hundreds of milliseconds, so "
        "only fixed-shape deployments gain from it.",
    )
    cuda_graphs: bool = Field(
        True,
        description="On CUDA, record a batch's whole GPU work (forward pass, class ranking, maps and "
        "heat images) for each batch size bucket (1, 2, 4, … max_batch_size) at warmup_image_size as "
        "CUDA graphs at start-up, and replay them for batches of that image size, padded to one graph "
        "or split over several as their start-up timings say is quicker: one launch instead of dozens, "
        "the same answers. Other sizes, padded batches and batches wanting both kinds of map run as "
        "without it. No effect on a CPU.",
    )
    memory_trim_interval_s: float | None = Field(
        None,
        ge=0,
        description="Seconds between glibc malloc_trim calls that give freed heap back to the OS; 0 "
        "disables them. Default: 10 on CPU, off on CUDA, where the trims cost throughput.",
    )
    warmup_image_size: int = Field(
        60, ge=1, description="Side of the images used to warm up each batch shape."
    )

    # Connection defences of `python -m app.serve` (app/runtime/protocol.py; docs/reliability.md).
    # Each applies per worker process; plain `uvicorn app.main:app` does not read them.
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest request line plus headers; past it the answer is 431 and the connection "
        "is closed.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection has to send a request's line and headers, counted from the "
        "connection or the previous response; past them it gets 408 and is closed.",
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request body must keep arriving, and an answer leaving: a connection that sends "
        "(or reads) less than GLIMPSE_BODY_MIN_RATE_BYTES_S in any window of this many seconds is closed.",
    )
    body_min_rate_bytes_s: int = Field(
        1024, ge=0, description="Slowest accepted upload, in bytes a second (see GLIMPSE_BODY_TIMEOUT_S)."
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="Open connections per worker. Past it a new connection first displaces the one "
        "that has waited longest for its headers, or for a stalled body; with none such it gets 503.",
    )
    max_pending_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024 * 1024,
        description="Request bodies still arriving, summed over a worker's connections; past it the "
        "uploads wait (reading paused), and stalled ones are closed sooner to make room.",
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.max_images_per_request > self.max_queue_size:
            raise ValueError(
                f"GLIMPSE_MAX_IMAGES_PER_REQUEST ({self.max_images_per_request}) must not exceed "
                f"GLIMPSE_MAX_QUEUE_SIZE ({self.max_queue_size})"
            )
        return self

    def pipeline_limits(self, card_min_size: int) -> Limits:
        """The request core's limits; the card's minimum image size unless one is set."""
        return Limits(
            max_body_bytes=self.max_body_bytes,
            max_images_per_request=self.max_images_per_request,
            max_image_pixels=self.max_image_pixels,
            min_image_size=self.min_image_size or card_min_size,
            request_timeout_s=self.request_timeout_s,
        )

    def trim_interval_s(self, device_type: str) -> float:
        """The memory-trim interval in force on this device type; 0 means no trimming."""
        if self.memory_trim_interval_s is not None:
            return self.memory_trim_interval_s
        return 0.0 if device_type == "cuda" else TRIM_INTERVAL_S

    def inline_forward_max_s(self) -> float:
        """The engine's budget for forward passes on the event loop; 0 when a worker has several cores.

        A worker that runs its passes inline is one thread: with cores to spare it would leave them
        idle, where the inference thread overlaps its passes with the loop's decoding
        (``bench/HISTORY.md``: one worker on two cores served less, with a long tail, inline).
        """
        return self.inline_forward_max_ms / 1000 if self.cores_per_worker == 1 else 0.0

    @property
    def cpu_count(self) -> int:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    @property
    def cores_per_worker(self) -> int:
        """This process's share of the cores: several workers each taking every core thrash."""
        return max(1, self.cpu_count // self.workers)

    # -- the engine's pixel budgets --------------------------------------------------------------------
    max_batch_pixels: int = Field(
        4096 * 4096,
        ge=1,
        description="Padded pixels in one forward pass: images padded to a common size share a pass up "
        "to this many; one larger image runs alone.",
    )
    max_inflight_pixels: int | None = Field(
        None,
        ge=1,
        description="Declared pixels of the images admitted at once (decoding, queued or running), which "
        "bounds their memory; a request over it gets 413, one that the images in flight leave no room "
        "for gets 503. Default: 4 × max_image_pixels. At least max_image_pixels.",
    )

    @model_validator(mode="after")
    def _check_pixel_budget(self) -> Settings:
        if self.max_inflight_pixels is not None and self.max_inflight_pixels < self.max_image_pixels:
            raise ValueError(
                f"GLIMPSE_MAX_INFLIGHT_PIXELS ({self.max_inflight_pixels}) must be at least "
                f"GLIMPSE_MAX_IMAGE_PIXELS ({self.max_image_pixels}): the largest image must fit"
            )
        return self

    def inflight_pixels(self) -> int:
        """The in-flight pixel budget in force."""
        return self.max_inflight_pixels or 4 * self.max_image_pixels


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once; tests pass their own ``Settings`` to ``create_app``."""
    return Settings()


def describe_invalid_settings(error: ValidationError) -> str:
    """One line per setting that did not validate, named as the operator sets it.

    pydantic's own text names fields (``max_batch_size``) and ends each entry with a documentation
    link; an operator sets ``GLIMPSE_MAX_BATCH_SIZE``.
    """
    lines = []
    for entry in error.errors(include_url=False):
        message = str(entry["msg"]).removeprefix("Value error, ")
        field = str(entry["loc"][0]) if entry["loc"] else ""
        info = Settings.model_fields.get(field)
        if info is None:  # a check across fields (the model validator), whose message names them
            lines.append(message)
            continue
        alias = info.validation_alias
        name = alias if isinstance(alias, str) else f"GLIMPSE_{field.upper()}"
        shown = f" (got {entry['input']!r})" if isinstance(entry["input"], str) else ""
        lines.append(f"{name}: {message}{shown}")
    return "\n".join(lines)
