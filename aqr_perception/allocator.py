"""glibc malloc settings for a process that handles the same large buffers every frame.

Every frame allocates and frees the same large blocks: six 4.3 MB raw images taken from
DDS, decoded JPEGs, resized views, the model's activations (PyTorch's CPU allocator has
no cache: each tensor is a fresh ``malloc``). By default glibc serves blocks above a
dynamic threshold (at most 32 MB) with ``mmap`` and returns freed memory above
``M_TRIM_THRESHOLD`` to the kernel, so each frame's blocks come back as new pages and
every page is faulted in and zeroed again: measured on the 2-core dev VM, ~15,000 minor
page faults and ~75 ms of kernel time per tiny-model inference (``bench/node_io.py``
prints the counts). Raising both thresholds keeps the freed blocks in the heap for the
next frame: RSS stays at the working set's peak instead of breathing with every frame.

Stands in for setting ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the
environment, which glibc reads only at process start (a launch file cannot rely on it).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap (glibc's upper limit for M_MMAP_THRESHOLD on
#: 64-bit: HEAP_MAX_SIZE / 2); larger ones are still mmapped and returned on free
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: freed memory at the top of the heap is kept up to this much before it is trimmed
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def _mallopt():
    """glibc's ``mallopt``, or None (musl, macOS, Windows: no such tuning)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        fn = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has a mallopt that ignores these)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def available() -> bool:
    """Whether this process runs on glibc, whose malloc takes these settings."""
    return _mallopt() is not None


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks up to 32 MB for reuse instead of returning them to the
    kernel. Idempotent; returns whether the settings took effect (False off glibc)."""
    fn = _mallopt()
    if fn is None:
        return False
    return bool(fn(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(fn(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
