"""The threads a generation runs on. torch keeps its intra-op thread count per calling thread (OpenMP's setting): a
process's main thread, a server's request thread and a fresh thread can each run the same forward pass with a
different count and a different speed. On 2 busy cores, two spinning threads in the caller's thread made one forward
pass ~3x slower than in a fresh thread (`benchmarks/bench_generation.py`), so a generation sets the count where it
runs, for its own duration, as a search does for faiss (`logmem.memory.index.faiss_index.omp_threads`).

Measured here (`benchmarks/results/generation.md`, load 3-4): with torch's 2 threads an answer ran at 12.9 tokens/s
in the main thread, 8.4 in a request thread, 9.8 in a fresh one and 8.0 streamed; with one thread (auto on 2 cores)
7.0-7.2 wherever it was asked. At load 9 two threads in the main thread fell to 0.6 tokens/s against 2.1 with one.
Auto trades the best case on an idle machine for the same speed in every thread and under load; set
`generation_threads` to the cores on a machine that does nothing else."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def generation_threads(setting: int) -> int:
    """The thread count a `setting` asks for: itself when positive; 0 ("auto") leaves one core to the rest of the
    process (the server's event loop, the embedder, the next request): the cores less one, at least one."""
    if setting > 0:
        return setting
    return max(1, (os.cpu_count() or 1) - 1)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` in this thread for the block, then set back (the call costs microseconds)."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


def on_generation_threads(method: F) -> F:
    """A `MemoryGenerator` method run on its config's `threads` (`generation_threads`) in the calling thread."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        with torch_threads(generation_threads(self.gen_config.threads)):
            return method(self, *args, **kwargs)

    return run  # type: ignore[return-value]
