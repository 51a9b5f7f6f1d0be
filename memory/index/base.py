"""The index contract every backend meets (exact NumPy, faiss flat, faiss HNSW)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import DimensionMismatchError
from ..kernels import find_all


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

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids` (float32, (len(ids), d), in their order): what a search's scoring compares its
        candidates by. An id the index does not hold raises KeyError."""
        ...

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


class Places:
    """Each id's row in an index's row -> id array, made ready at the first lookup after the array was replaced (an
    index replaces it on every change): looked up in place while its ids are increasing, as SQL adds them
    (`kernels.find_all`), else in a sorted copy (a repeated id, one back before a compaction, gives its last row)."""

    def __init__(self) -> None:
        self._of: np.ndarray | None = None  # the array the lookup was made ready for
        self._sorted = np.empty(0, dtype=np.int64)  # the ids in order
        self._order: np.ndarray | None = None  # their rows (None: the array itself, increasing)

    def rows(self, all_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self._of is not all_ids:
            increasing = bool((np.diff(all_ids) > 0).all())
            self._order = None if increasing else np.argsort(all_ids, kind="stable")
            self._sorted = all_ids if increasing else all_ids[self._order]
            self._of = all_ids
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if self._order is None:
            at = find_all(self._sorted, ids)
            unknown = at < 0
        else:
            at = np.searchsorted(self._sorted, ids, side="right") - 1
            unknown = (at < 0) | (self._sorted[np.maximum(at, 0)] != ids) if len(self._sorted) else ids == ids
        if unknown.any():
            raise KeyError(f"the index holds no vector of id {int(ids[np.argmax(unknown)])}")
        return at if self._order is None else self._order[at]


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)
