"""Exact inner-product search in NumPy: the oracle every other backend is tested against."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .base import Places, check_ids, check_vectors, empty_result


class ExactIndex:
    """Brute force `xq @ xb.T` with argpartition; exact, and fast enough up to ~100k vectors."""

    kind = "exact"

    def __init__(self, d: int) -> None:
        self.d = d
        self._ids = np.empty(0, dtype=np.int64)
        self._xb = np.empty((0, d), dtype=np.float32)
        self._places = Places()

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        xb = check_vectors(xb, self.d, "xb")
        ids = check_ids(ids, xb.shape[0])
        self._ids = np.concatenate([self._ids, ids])
        self._xb = np.concatenate([self._xb, xb])

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq = check_vectors(xq, self.d, "xq")
        D, I = empty_result(xq.shape[0], k)
        n = len(self._ids)
        if n == 0 or k <= 0:
            return D, I
        kk = min(k, n)
        S = xq @ self._xb.T
        top = np.argpartition(-S, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (len(xq), 1))
        part = np.take_along_axis(S, top, axis=1)
        order = np.argsort(-part, axis=1, kind="stable")
        D[:, :kk] = np.take_along_axis(part, order, axis=1)
        I[:, :kk] = self._ids[np.take_along_axis(top, order, axis=1)]
        return D, I

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self._xb[self._places.rows(self._ids, ids)]

    def remove(self, ids: np.ndarray) -> int:
        keep = ~np.isin(self._ids, np.asarray(ids, dtype=np.int64))
        removed = int((~keep).sum())
        self._ids, self._xb = self._ids[keep], self._xb[keep]
        return removed

    def __len__(self) -> int:
        return len(self._ids)

    def nbytes(self) -> int:
        return int(self._ids.nbytes + self._xb.nbytes)

    def save(self, path: Path) -> None:
        with open(path, "wb") as fh:
            np.savez(fh, ids=self._ids, xb=self._xb)

    @classmethod
    def load(cls, path: Path) -> ExactIndex:
        """Read a file written by `save`. Raises ValueError (or KeyError) when it is not one."""
        try:
            with np.load(path) as z:
                index = cls(int(z["xb"].shape[1]))
                index._ids, index._xb = z["ids"], z["xb"]
        except (zipfile.BadZipFile, EOFError) as exc:  # a truncated .npz; callers expect ValueError
            raise ValueError(f"{path} is not an exact index file: {exc}") from exc
        return index
