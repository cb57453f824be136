"""Keep resident memory flat under long mixed traffic: bounded kernel caches, freed heap given back.

Two things raised the soak's resident memory after warm-up; docs/reliability.md (Memory) has the
measurements.

**oneDNN kernels per batch shape.** On the CPU every new batch shape (images × padded height × width)
makes oneDNN build and cache its kernels (six convolutions and their weight reorders), ~240 kB each
with bfloat16 on AMX, in two caches that hold 1,024 each by default: rare shapes kept turning up for
the whole soak (49 shapes, 391 kernels in 100,000 requests) and each of them stayed.
:func:`bound_kernel_caches` caps both caches at :data:`KERNEL_CACHE_CAPACITY` before the first forward
pass; a rare shape is then evicted and rebuilt (~0.4 ms a kernel) when it comes back. An operator's
own ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` or ``LRU_CACHE_CAPACITY`` wins.

**Freed heap kept by glibc.** glibc's malloc keeps freed memory for reuse in per-thread arenas (the
event loop, the inference thread, torch's intra-op threads and the decode pool each get one). Its mmap
threshold is dynamic: once a block of N bytes (N ≤ 32 MiB) is freed, later blocks up to N come from
those arenas instead of mappings of their own, and an arena is trimmed only when more than 2·N sits
free at its top. So the activations of an unusually large padded batch (say 32 images of 256×192) are
carved from the arenas and stay resident once freed: a step that never comes back down.
:class:`FreedMemoryTrimmer` calls glibc's ``malloc_trim(0)`` every :data:`TRIM_INTERVAL_S` seconds
from a thread of its own. It releases the pages of every free block in every arena (and the main
arena's top), so such a batch costs resident memory for seconds, not for the life of the process. It
cannot release the free top of a per-thread arena: that part stays until glibc's own trim threshold is
passed. A trim takes 0.04 ms with nothing to release and 2-3 ms after a big batch; the pages the next
batches need are faulted in again. Capping the arenas (``M_ARENA_MAX`` ≤ 2) or fixing the thresholds
(``M_MMAP_THRESHOLD``/``M_TRIM_THRESHOLD``) would release the tops too, but measured 20-30 % slower
forward passes. Where malloc is not glibc's (musl, macOS) the trimmer does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable
from typing import cast

logger = logging.getLogger("glimpse.memory")

TRIM_INTERVAL_S = 10.0
# Kernels per cache: in the soak 256 cost 1,076 builds instead of 391 (0.1 % of the CPU); 128 thrashed
# (49,765 builds, 15 % fewer requests a second).
KERNEL_CACHE_CAPACITY = 256
# oneDNN's primitive cache and ideep's (PyTorch's oneDNN wrapper) LRU cache, both read on first use.
KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_caches(capacity: int = KERNEL_CACHE_CAPACITY) -> dict[str, str]:
    """Cap oneDNN's kernel caches unless the environment already does; returns the values in force.

    Must run before the process's first oneDNN primitive (the lifespan's warm-up): both libraries read
    the variable once, when their cache is first used.
    """
    for name in KERNEL_CACHE_VARIABLES:
        os.environ.setdefault(name, str(capacity))
    return {name: os.environ[name] for name in KERNEL_CACHE_VARIABLES}


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` in this process, or None where the C library has none."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    malloc_trim.restype = ctypes.c_int
    malloc_trim.argtypes = [ctypes.c_size_t]
    return cast(Callable[[int], int], malloc_trim)


class FreedMemoryTrimmer:
    """A daemon thread returning glibc's free heap pages to the OS; see the module docstring."""

    def __init__(self, interval_s: float = TRIM_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.trims = 0
        self._malloc_trim = _malloc_trim()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glimpse-memory-trim", daemon=True)

    @property
    def supported(self) -> bool:
        return self._malloc_trim is not None

    def trim(self) -> bool:
        """Release free heap pages now; True when glibc gave memory back."""
        if self._malloc_trim is None:
            return False
        self.trims += 1
        return bool(self._malloc_trim(0))

    def start(self) -> FreedMemoryTrimmer:
        if self.supported:
            self._thread.start()
        else:
            logger.debug("no malloc_trim: freed memory is left to the allocator")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.trim()
