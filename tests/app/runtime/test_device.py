"""Device and precision choice: what GLIMPSE_DEVICE and GLIMPSE_AMP_DTYPE resolve to."""

from __future__ import annotations

from typing import Literal

import pytest
import torch

from app.config import Settings
from app.runtime import device as runtime
from app.runtime.device import Precision
from app.runtime.lifecycle import DeviceUnavailable


@pytest.mark.parametrize(
    ("requested", "device", "amx", "expected"),
    [
        ("auto", "cuda", False, torch.bfloat16),
        ("auto", "cpu", True, torch.bfloat16),  # float32 where the CPU cannot run bfloat16 at all
        ("auto", "cpu", False, None),
        ("float32", "cuda", True, None),
        ("float16", "cuda", False, torch.float16),
        ("bfloat16", "cuda", False, torch.bfloat16),
        ("bfloat16", "cpu", False, torch.bfloat16),  # asked for explicitly: honoured where the CPU can
    ],
)
def test_amp_dtype_resolution(
    requested: Literal["auto"] | Precision,
    device: str,
    amx: bool,
    expected: torch.dtype | None,
    cpu_bfloat16: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "cpu_has_amx_bf16", lambda: amx)
    if device == "cpu" and expected == torch.bfloat16 and not cpu_bfloat16:
        if requested == "auto":
            assert runtime.choose_amp_dtype(requested, torch.device(device)) is None
            return
        with pytest.raises(DeviceUnavailable) as refused:
            runtime.choose_amp_dtype(requested, torch.device(device))
        assert str(refused.value) == f"GLIMPSE_AMP_DTYPE=bfloat16: {runtime.BFLOAT16_UNSUPPORTED}"
        return
    assert runtime.choose_amp_dtype(requested, torch.device(device)) == expected


def test_bfloat16_support_is_pytorchs_own_check_unless_tests_force_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(runtime.WITHOUT_BFLOAT16_ENV, raising=False)
    assert runtime.cpu_supports_bfloat16() == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    monkeypatch.setenv(runtime.WITHOUT_BFLOAT16_ENV, "1")
    assert runtime.cpu_supports_bfloat16() is False


def test_the_decision_agrees_with_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where bfloat16 is allowed, the packing's weight reorder runs; elsewhere it is oneDNN's refusal."""
    monkeypatch.delenv(runtime.WITHOUT_BFLOAT16_ENV, raising=False)
    weight = torch.randn(4, 1, 3, 3).to(torch.bfloat16).to_mkldnn()
    reorder = torch._C._nn.mkldnn_reorder_conv2d_weight  # what pack_convolutions calls
    if runtime.cpu_supports_bfloat16():
        assert reorder(weight, [0, 0], [1, 1], [1, 1], 1).dtype == torch.bfloat16
    else:
        with pytest.raises(RuntimeError, match="bf16 path needs the cpu support"):
            reorder(weight, [0, 0], [1, 1], [1, 1], 1)


@pytest.mark.parametrize(("device", "amp_dtype"), [("cpu", "bfloat16"), ("cpu", "auto"), ("cpu", "float32")])
def test_the_launcher_refuses_only_an_explicit_bfloat16_the_cpu_cannot_run(
    device: str, amp_dtype: str, cpu_bfloat16: bool
) -> None:
    settings = Settings(_env_file=None, device=device, amp_dtype=amp_dtype)
    refusal = runtime.amp_dtype_refusal(settings)
    if amp_dtype == "bfloat16" and not cpu_bfloat16:
        assert refusal == f"GLIMPSE_AMP_DTYPE=bfloat16: {runtime.BFLOAT16_UNSUPPORTED}"
    else:
        assert refusal is None


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


def test_workers_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn's WEB_CONCURRENCY workers each take their share of the cores, not all of them."""
    monkeypatch.setattr(Settings, "cpu_count", property(lambda self: 8))
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    settings = Settings(_env_file=None)
    assert (settings.workers, settings.cores_per_worker) == (3, 2)
    previous = torch.get_num_threads()
    try:
        runtime.configure_torch(settings, torch.device("cpu"))
        assert torch.get_num_threads() == 2
        runtime.configure_torch(Settings(_env_file=None, torch_threads=5), torch.device("cpu"))
        assert torch.get_num_threads() == 5  # an explicit setting wins
    finally:
        torch.set_num_threads(previous)
    monkeypatch.setenv("WEB_CONCURRENCY", "16")
    assert Settings(_env_file=None).cores_per_worker == 1


def test_inline_forward_passes_only_for_workers_with_one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker with cores to spare keeps its passes in the inference thread (bench/HISTORY.md)."""
    monkeypatch.setattr(Settings, "cpu_count", property(lambda self: 2))
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    assert Settings(_env_file=None).inline_forward_max_s() == pytest.approx(0.02)
    assert Settings(_env_file=None, inline_forward_max_ms=5).inline_forward_max_s() == pytest.approx(0.005)
    assert Settings(_env_file=None, inline_forward_max_ms=0).inline_forward_max_s() == 0.0
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    assert Settings(_env_file=None).inline_forward_max_s() == 0.0


def test_cudnn_benchmark_mode_is_off_unless_asked_for() -> None:
    """Benchmark mode times kernels for every new shape on first sight, stalling that batch."""
    previous = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        runtime.configure_torch(Settings(_env_file=None), torch.device("cpu"))
        assert torch.backends.cudnn.benchmark is False
        runtime.configure_torch(Settings(_env_file=None, cudnn_benchmark=True), torch.device("cpu"))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = previous


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [(None, "cpu", 10.0), (None, "cuda", 0.0), ("2.5", "cuda", 2.5), ("0", "cpu", 0.0)],
)
def test_memory_trim_interval(
    setting: str | None, device: str, expected: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    if setting is not None:
        monkeypatch.setenv("GLIMPSE_MEMORY_TRIM_INTERVAL_S", setting)
    assert Settings(_env_file=None).trim_interval_s(device) == expected
