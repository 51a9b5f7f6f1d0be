"""`kept_heap`: memory freed inside the block is reused without faulting fresh pages in; after it, handed back."""

from __future__ import annotations

import resource
import threading

import pytest
import torch
from logmem.model import heap
from logmem.model.heap import kept_heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="kept_heap tunes glibc's allocator")

MB = 2**20
PAGES = 6 * 16 * MB // 4096  # the pages of one round


def round_faults(blocks: int = 6) -> int:
    """Page faults of one round as a training step makes it: `blocks` tensors of 16 MB allocated, every byte
    written, then all freed."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.empty(16 * MB // 4, dtype=torch.float32).fill_(1.0) for _ in range(blocks)]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def resident_mb() -> int:
    status = open("/proc/self/status").read()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def test_inside_the_block_the_rounds_after_the_first_fault_nothing_in() -> None:
    default = [round_faults() for _ in range(3)]
    assert min(default) > PAGES // 2, default  # glibc hands the blocks back each round: every page faults again
    with kept_heap():
        kept = [round_faults() for _ in range(6)]
        with kept_heap():  # nested: the inner block's end keeps the outer one's setting
            pass
        kept.append(round_faults())
        inside = resident_mb()
    assert max(kept[3:]) < 500, kept
    assert heap._holders == 0
    assert resident_mb() < inside - 48  # the block's end handed the kept memory back


def test_a_thread_other_than_the_main_one_keeps_its_heaps_too() -> None:
    """Outside the main thread glibc gives a thread heaps of its own (64 MB each), which it frees whole once empty
    unless the trim threshold stays under their size."""
    counted: list[int] = []

    def work() -> None:
        with kept_heap():
            counted.extend(round_faults(blocks=12) for _ in range(5))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert len(counted) == 5 and max(counted[3:]) < 1000, counted
