"""Where and how the forward pass runs: the device, torch's threads and the autocast precision."""

from __future__ import annotations

import os
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


# Tests set this to "1" to run as on a CPU without bfloat16 convolutions, whatever CPU runs them
# (tests/conftest.py). Not a GLIMPSE_ setting: the tests' servers start from an environment without
# those, and this one must reach them.
WITHOUT_BFLOAT16_ENV = "TEST_CPU_WITHOUT_BFLOAT16"
BFLOAT16_UNSUPPORTED = (
    "this CPU cannot run bfloat16 convolutions (oneDNN needs AVX-512 BW, VL and DQ, or AVX-NE-CONVERT); "
    "use GLIMPSE_AMP_DTYPE=auto or float32"
)


def cpu_supports_bfloat16() -> bool:
    """Whether this CPU can run the model in bfloat16: the one place that decides it.

    PyTorch's own check, which reads the CPU's flags through cpuinfo (``ONEDNN_MAX_CPU_ISA`` does not
    change it): without it, a bfloat16 convolution stops with "bf16 path needs the cpu support".
    """
    if os.environ.get(WITHOUT_BFLOAT16_ENV) == "1":
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def choose_amp_dtype(requested: Literal["auto"] | Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``GLIMPSE_AMP_DTYPE``; None runs float32.

    ``auto`` takes bfloat16 where the hardware multiplies it natively — every CUDA GPU the service
    supports, and CPUs with AMX, where ``bench.inprocess`` measures this model's forward pass 2–3×
    faster than in float32 — and float32 elsewhere, where bfloat16 would be emulated and slower.
    An explicit ``bfloat16`` on a CPU that cannot run it raises :class:`DeviceUnavailable`.
    """
    if requested == "auto":
        native = device.type == "cuda" or (cpu_has_amx_bf16() and cpu_supports_bfloat16())
        return torch.bfloat16 if native else None
    check_amp_dtype(requested, device)
    return _AMP_DTYPES[requested]


def check_amp_dtype(requested: Literal["auto"] | Precision, device: torch.device) -> None:
    """Raise :class:`DeviceUnavailable`, in one line naming the setting, if ``device`` cannot run it."""
    if requested == "bfloat16" and device.type == "cpu" and not cpu_supports_bfloat16():
        raise DeviceUnavailable(f"GLIMPSE_AMP_DTYPE=bfloat16: {BFLOAT16_UNSUPPORTED}")


def amp_dtype_refusal(settings: Settings) -> str | None:
    """Why the settings' precision cannot run here, or None; for the launcher, before any worker starts.

    Decided only where the device is surely the CPU (``GLIMPSE_DEVICE=cpu``, or a PyTorch built without
    CUDA): asking CUDA would initialise it in a process that then forks the workers. Elsewhere the
    lifespan's :func:`check_amp_dtype` stops start-up instead, with the same line.
    """
    if settings.device != "cpu" and torch.backends.cuda.is_built():  # type: ignore[no-untyped-call]
        return None
    try:
        check_amp_dtype(settings.amp_dtype, torch.device("cpu"))
    except DeviceUnavailable as refusal:
        return str(refusal)
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
