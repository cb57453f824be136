"""Where and how the forward pass runs: the device, torch's threads and the autocast precision."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from app.runtime.lifecycle import DeviceUnavailable

if TYPE_CHECKING:  # app.config imports the engine, which imports this module
    from app.config import Settings

Precision = Literal["float32", "bfloat16", "float16"]
_AMP_DTYPES: dict[Precision, torch.dtype | None] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": None,
}


def precision_name(amp_dtype: torch.dtype | None) -> Precision:
    """The ``GLIMPSE_AMP_DTYPE`` spelling of an autocast dtype (None runs float32)."""
    return next(name for name, dtype in _AMP_DTYPES.items() if dtype == amp_dtype)


def choose_amp_dtype(requested: Literal["auto"] | Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``GLIMPSE_AMP_DTYPE``; None runs float32.

    ``auto`` takes bfloat16 where the hardware multiplies it natively — every CUDA GPU the service
    supports, and CPUs with AMX, where ``bench.inprocess`` measures this model's forward pass 2–3×
    faster than in float32 — and float32 elsewhere, where bfloat16 would be emulated and slower.
    """
    if requested != "auto":
        return _AMP_DTYPES[requested]
    if device.type == "cuda" or cpu_has_amx_bf16():
        return torch.bfloat16
    return None


def cpu_has_amx_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            return any(line.startswith("flags") and " amx_bf16" in line for line in cpuinfo)
    except OSError:  # not Linux: no autodetection
        return False


def choose_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("GLIMPSE_DEVICE=cuda but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def configure_torch(settings: Settings, device: torch.device) -> None:
    torch.set_num_threads(settings.torch_threads or settings.cores_per_worker)
    # Off by default: clients choose image sizes and batches form with any number of images, so
    # benchmark mode kept meeting new shapes, and each stalled its batch while cuDNN timed kernels
    # (GPU p99 of 0.3-0.7 s; bench/NOTES.md, "What moved the GPU figures").
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
