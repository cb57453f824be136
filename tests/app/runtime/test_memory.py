"""app/runtime/memory.py: the trimmer gives glibc's free heap pages back, and does nothing without glibc."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.runtime import memory
from app.runtime.memory import FreedMemoryTrimmer


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line")


def churn_in_a_thread() -> list[np.ndarray[Any, Any]]:
    """Free 64 MiB inside a thread's heap, as a batch's activations are: 2 MiB blocks between survivors.

    A first 16 MiB block raises glibc's dynamic mmap threshold, so the 2 MiB blocks come from the
    thread's arena; each is followed by a small block that stays alive (returned), so the freed ones
    are free chunks inside the heap, which glibc keeps resident, and not its top, which it may trim.
    """
    survivors: list[np.ndarray[Any, Any]] = []

    def work() -> None:
        np.ones(16 * 2**20, dtype=np.uint8).sum()
        blocks = []
        for _ in range(32):
            blocks.append(np.ones(2 * 2**20, dtype=np.uint8))
            survivors.append(np.ones(256 * 2**10, dtype=np.uint8))
        del blocks

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return survivors


def test_trim_returns_freed_heap_memory_to_the_os() -> None:
    trimmer = FreedMemoryTrimmer()
    assert trimmer.supported  # the service runs on glibc (Debian here and in the image)
    survivors = churn_in_a_thread()
    held = rss_mib()
    assert trimmer.trim()
    released = held - rss_mib()
    print(f"RSS {held:.1f} MiB, {released:.1f} MiB released by malloc_trim")
    assert released > 32
    assert len(survivors) == 32


def test_the_thread_trims_periodically_and_stops() -> None:
    trimmer = FreedMemoryTrimmer(interval_s=0.01).start()
    try:
        for _ in range(500):
            if trimmer.trims >= 2:
                break
            threading.Event().wait(0.01)
    finally:
        trimmer.stop()
    assert trimmer.trims >= 2
    count = trimmer.trims
    threading.Event().wait(0.05)
    assert trimmer.trims == count


def test_without_malloc_trim_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    trimmer = FreedMemoryTrimmer(interval_s=0.01).start()
    trimmer.stop()
    assert not trimmer.supported
    assert not trimmer.trim()
    assert trimmer.trims == 0


def test_kernel_caches_are_capped_unless_the_environment_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "64")  # an operator's choice
    in_force = memory.bound_kernel_caches()
    assert in_force == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256", "LRU_CACHE_CAPACITY": "64"}
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(memory.KERNEL_CACHE_CAPACITY)
