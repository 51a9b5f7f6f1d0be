"""Freed memory kept in the process while a consolidation job runs.

A training step allocates the same large tensors as the step before it: the forward pass keeps every layer's
activations for the backward (~7 GB for 8 NFCats prompts of ~350 tokens on SmolLM2-135M with a LoRA on every
projection), and the backward frees them. glibc gives memory freed in large blocks back to the system (`munmap`, and
`trim` of the heap's top), so the next step faults the same amount of fresh pages in again. On a virtual machine whose
host takes back the pages its guest frees (this one: a Firecracker guest with a balloon), each such page costs ~12 us:
that forward pass took 27 s with 1.7 million page faults when its memory was fresh, and 5.4 s with none once its memory
was kept (`benchmarks/results/job_time.md`). On any machine the faults cost something (~1-2 us a page).

`kept_heap()` keeps what is freed inside the process for its block (glibc's `mallopt`: large blocks from the heap,
never `mmap`ed, and no trim) and hands it back after (`malloc_trim`). The process's resident memory stays at the job's
peak meanwhile. Where the C library is not glibc, it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

logger = logging.getLogger(__name__)

# mallopt(3) parameters and glibc's defaults
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
INT_MAX = 2**31 - 1

_lock = threading.Lock()
_holders = 0


@cache
def _glibc() -> Any | None:
    """glibc's handle, or None (another C library, another system)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):  # musl and others have no gnu_get_libc_version
        return None


@contextmanager
def kept_heap() -> Iterator[None]:
    """Memory freed during the block stays in the process, for the next allocation to reuse; handed back after (the
    last of nested or concurrent blocks to end does it).

    Trimming is off for the heap that the calling thread allocates from: in the main thread, glibc's main heap,
    whose free top can pass any size (a threshold of -1 means none); in another thread at 2 GB (the largest value
    `mallopt` takes), past any of the heaps glibc gives such a thread (64 MB each). Measured in a worker thread as in
    the main one: NFCats' training steps (`tests/model/test_heap.py` checks both on smaller blocks)."""
    global _holders
    libc = _glibc()
    if libc is None:
        yield
        return
    trim = -1 if threading.current_thread() is threading.main_thread() else INT_MAX
    with _lock:
        _holders += 1
        if _holders == 1:
            libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, trim)
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
