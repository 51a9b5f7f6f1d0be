"""faiss backends: exact flat inner product, and HNSW for large memories."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .base import check_ids, check_vectors, empty_result


@contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """faiss' OpenMP threads set to `n` in this thread for the block, then set back (None: left alone).

    OpenMP keeps the setting per calling thread, so it is set where the search runs (a server's worker
    thread), not once at start-up; the call costs nanoseconds."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class _FaissIndex:
    kind = "faiss"

    def __init__(self, d: int, index: Any, threads: int | None = None) -> None:  # index: a faiss index
        self.d = d
        self._index = index
        self.threads = threads  # OpenMP threads for a search (1 is fastest for one query on a few cores)

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        xb = check_vectors(xb, self.d, "xb")
        self._index.add_with_ids(xb, check_ids(ids, xb.shape[0]))

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq = check_vectors(xq, self.d, "xq")
        if self._index.ntotal == 0 or k <= 0:
            return empty_result(xq.shape[0], k)
        with omp_threads(self.threads):
            D, I = self._index.search(xq, k)
        D[I < 0] = -np.inf  # faiss pads missing results with -1 ids and arbitrary distances
        return D, I

    def remove(self, ids: np.ndarray) -> int:
        return int(self._index.remove_ids(np.asarray(ids, dtype=np.int64)))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def nbytes(self) -> int:
        return int(faiss.serialize_index(self._index).nbytes)

    def save(self, path: Path) -> None:
        faiss.write_index(self._index, str(path))


class FlatIndex(_FaissIndex):
    """Exact search with faiss `IndexFlatIP` (ids through `IndexIDMap2`)."""

    kind = "flat"

    def __init__(self, d: int, index: faiss.Index | None = None, *, threads: int | None = None) -> None:
        super().__init__(d, index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(d)), threads)


class HNSWIndex(_FaissIndex):
    """Approximate search with faiss HNSW over inner product.

    HNSW cannot delete nodes, so `remove` rebuilds the graph from the vectors that stay.
    """

    kind = "hnsw"

    def __init__(self, d: int, *, m: int = 32, ef_construction: int = 64, ef_search: int = 128,
                 index: faiss.Index | None = None, threads: int | None = None) -> None:
        if index is None:
            inner = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = ef_construction
            index = faiss.IndexIDMap2(inner)
        super().__init__(d, index, threads)
        self.m, self.ef_construction = m, ef_construction
        self.ef_search = ef_search

    @property
    def ef_search(self) -> int:
        return int(_hnsw(self._index).efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        _hnsw(self._index).efSearch = int(value)

    def remove(self, ids: np.ndarray) -> int:
        gone = np.isin(self._all_ids(), np.asarray(ids, dtype=np.int64))
        if not gone.any():
            return 0
        keep_ids = self._all_ids()[~gone]
        keep_xb = np.vstack([self._index.reconstruct(int(i)) for i in keep_ids]) if len(keep_ids) else None
        fresh = HNSWIndex(self.d, m=self.m, ef_construction=self.ef_construction, ef_search=self.ef_search,
                          threads=self.threads)
        if keep_xb is not None:
            fresh.add(keep_ids, keep_xb)
        self._index = fresh._index
        return int(gone.sum())

    def _all_ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)


def load_faiss(path: Path, kind: str, *, ef_search: int = 128, threads: int | None = None) -> _FaissIndex:
    index = faiss.read_index(str(path))
    if kind == "flat":
        return FlatIndex(index.d, index=index, threads=threads)
    graph = _hnsw(faiss.downcast_index(index))
    return HNSWIndex(index.d, m=graph.nb_neighbors(1), ef_construction=graph.efConstruction, ef_search=ef_search,
                     index=index, threads=threads)


def _hnsw(id_map: Any) -> Any:
    """The HNSW graph inside an `IndexIDMap2(IndexHNSWFlat)` (faiss' stubs type every index as the base)."""
    inner: Any = faiss.downcast_index(id_map.index)
    return inner.hnsw
