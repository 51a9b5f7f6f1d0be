"""faiss backends: exact flat inner product, and HNSW for large memories."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..kernels import find_all
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
        self._view: tuple[tuple[np.ndarray, np.ndarray] | None] | None = None  # see `vector_table`

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        xb = check_vectors(xb, self.d, "xb")
        self._view = None
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
        self._view = None
        return int(self._index.remove_ids(np.asarray(ids, dtype=np.int64)))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        table = self.vector_table()
        if table is not None:
            at = find_all(table[0], ids)
            if (at >= 0).all():
                return table[1][at]
        try:
            return self._index.reconstruct_batch(ids)  # `IndexIDMap2`: by id, through its reverse map
        except RuntimeError as exc:  # faiss' own error for a key its map lacks
            raise KeyError(f"the index holds no vector of one of ids {ids.tolist()}") from exc

    def vector_table(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The ids and vectors as faiss holds them, as arrays over its memory (no copy; made again after any change,
        which may move it), where the ids are in increasing order (as SQL's ids are added): a candidate's vector is
        then a search of a sorted array away (`kernels.find_sorted`), inside the kernel that scores the candidates,
        where faiss' own lookup by id costs ~30 us cold. None where they are not (or the index is empty)."""
        if self._view is None:
            n, inner = self._index.ntotal, faiss.downcast_index(self._index.index)
            flat: Any = faiss.downcast_index(getattr(inner, "storage", inner))
            ids = faiss.rev_swig_ptr(self._index.id_map.data(), n) if n else np.empty(0, np.int64)
            self._view = ((ids, faiss.rev_swig_ptr(flat.get_xb(), n * self.d).reshape(n, self.d))
                          if n and isinstance(flat, faiss.IndexFlat) and (np.diff(ids) > 0).all() else None, )
        return self._view[0]

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

    HNSW cannot delete nodes, so `remove` leaves tombstones: the removed ids leave every search at once (a
    selector filters them out), their nodes stay in the graph until `compact` rebuilds it from the vectors
    that stay: on `save`, when tombstones pass COMPACT_SHARE of the graph, or when a removed id comes back. A
    follower applying another process's forget so pays no rebuild on its search path.
    """

    COMPACT_SHARE = 0.1  # tombstones past this share of the graph make `remove` compact it

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
        self._gone = np.empty(0, dtype=np.int64)  # removed ids whose nodes are still in the graph (sorted)
        self._keep: Any = None  # the selector that filters them out of searches (with what it references)

    @property
    def ef_search(self) -> int:
        return int(_hnsw(self._index).efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        _hnsw(self._index).efSearch = int(value)

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        if len(self._gone) and np.isin(np.asarray(ids, dtype=np.int64), self._gone).any():
            self.compact()  # an id comes back (SQLite reuses the highest): its old node must leave the graph first
        super().add(ids, xb)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not len(self._gone):
            return super().search(xq, k)
        xq = check_vectors(xq, self.d, "xq")
        if len(self) == 0 or k <= 0:
            return empty_result(xq.shape[0], k)
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch, params.sel = self.ef_search, self._keep[0]
        with omp_threads(self.threads):
            D, I = self._index.search(xq, k, params=params)
        D[I < 0] = -np.inf
        return D, I

    def remove(self, ids: np.ndarray) -> int:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        present = ids[np.isin(ids, self._all_ids()) & ~np.isin(ids, self._gone)]
        if not len(present):
            return 0
        self._gone = np.union1d(self._gone, present)
        if len(self._gone) > self.COMPACT_SHARE * self._index.ntotal:
            self.compact()
        else:
            batch = faiss.IDSelectorBatch(self._gone)
            self._keep = (faiss.IDSelectorNot(batch), batch)  # the batch must outlive the selector that wraps it
        return int(len(present))

    def compact(self) -> None:
        """Rebuild the graph from the vectors that stay (no tombstones left)."""
        if not len(self._gone):
            return
        ids = self._all_ids()
        stay = ~np.isin(ids, self._gone)
        inner: Any = faiss.downcast_index(self._index.index)
        xb = inner.reconstruct_n(0, inner.ntotal)[stay]
        fresh = HNSWIndex(self.d, m=self.m, ef_construction=self.ef_construction, ef_search=self.ef_search,
                          threads=self.threads)
        if len(xb):
            fresh.add(ids[stay], xb)
        self._index, self._gone, self._keep, self._view = fresh._index, np.empty(0, dtype=np.int64), None, None

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._gone)

    def save(self, path: Path) -> None:
        self.compact()  # the file holds no tombstone
        super().save(path)

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
