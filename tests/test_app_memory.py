"""app/memory.py: the trimmer gives glibc's free heap pages back, and does nothing without glibc."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from app import memory
from app.memory import FreedMemoryTrimmer


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line")


def churn_in_a_thread() -> None:
    """Allocate and free 64 MiB in 2 MiB blocks, in a thread of its own (so in an arena of its own).

    A first 16 MiB block raises glibc's dynamic mmap threshold, so the 2 MiB blocks come from the
    arena, and all of them are alive at once before they are freed: afterwards the arena holds them.
    """

    def work() -> None:
        np.ones(16 * 2**20, dtype=np.uint8).sum()
        blocks = [np.ones(2 * 2**20, dtype=np.uint8) for _ in range(32)]
        del blocks

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()


def test_trim_returns_freed_heap_memory_to_the_os() -> None:
    trimmer = FreedMemoryTrimmer()
    assert trimmer.supported  # the service runs on glibc (Debian here and in the image)
    churn_in_a_thread()
    held = rss_mib()
    assert trimmer.trim()
    released = held - rss_mib()
    print(f"RSS {held:.1f} MiB, {released:.1f} MiB released by malloc_trim")
    assert released > 32


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
