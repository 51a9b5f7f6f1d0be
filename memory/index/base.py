"""The index contract every backend meets (exact NumPy, faiss flat, faiss HNSW)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import DimensionMismatchError


@runtime_checkable
class Index(Protocol):
    """Inner-product search over unit vectors, keyed by int64 ids.

    `search` returns `D` (float32, (nq, k), best first) and `I` (int64, (nq, k)); slots past the
    number of stored vectors hold `-inf` and `-1`.
    """

    kind: str
    d: int

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None: ...

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def __len__(self) -> int: ...

    def nbytes(self) -> int: ...

    def save(self, path: Path) -> None: ...


def check_vectors(x: np.ndarray, d: int, name: str) -> np.ndarray:
    """`x` as a C-contiguous float32 (n, d) array, or a DimensionMismatchError naming the shape."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != d:
        raise DimensionMismatchError(f"{name} must have shape (n, {d}), got {x.shape}")
    return np.ascontiguousarray(x)


def check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.shape[0] != n:
        raise DimensionMismatchError(f"got {ids.shape[0]} ids for {n} vectors")
    return np.ascontiguousarray(ids)


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)
