"""Device and precision choice: what GLIMPSE_DEVICE and GLIMPSE_AMP_DTYPE resolve to."""

from __future__ import annotations

import pytest
import torch

from app import runtime
from app.lifecycle import DeviceUnavailable


@pytest.mark.parametrize(
    ("requested", "device", "amx", "expected"),
    [
        ("auto", "cuda", False, torch.bfloat16),
        ("auto", "cpu", True, torch.bfloat16),
        ("auto", "cpu", False, None),
        ("float32", "cuda", True, None),
        ("float16", "cuda", False, torch.float16),
        ("bfloat16", "cpu", False, torch.bfloat16),  # asked for explicitly: honoured even if emulated
    ],
)
def test_amp_dtype_resolution(
    requested: str, device: str, amx: bool, expected: torch.dtype | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "cpu_has_amx_bf16", lambda: amx)
    assert runtime.choose_amp_dtype(requested, torch.device(device)) == expected


def test_amx_detection_reads_the_cpu_flags() -> None:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    assert runtime.cpu_has_amx_bf16() == ("amx_bf16" in flags)


def test_cuda_without_a_gpu_is_a_startup_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceUnavailable, match="no CUDA device"):
        runtime.choose_device("cuda")
    assert runtime.choose_device("auto") == torch.device("cpu")
