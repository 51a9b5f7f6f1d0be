"""`hnsw_sq8`: HNSW over 8-bit scalar-quantized vectors, every answer re-scored exactly from the float vectors.

The graph and its 8-bit codes stay in memory (d bytes + ~8 m bytes of links a vector, about a third of float HNSW's
4 d + 8 m); the float vectors stay in the index file and are read with `os.pread` for the few candidates a
search re-scores (2 k, at least REFINE), never mapped: a search leaves them in the page cache, where the
kernel may drop them, not in the process. So a 1M-vector tenant of 384-d vectors takes ~0.7 GB of the
process (the graph: 384 MB of codes, ~260 MB of links at m=32), not ~1.9 GB, at the same recall@10 (0.963 at
efSearch 384 on bench_retrieval's 1M real-vector set); `benchmarks/bench_footprint.py` measures it.
The re-scoring is fast while the file's pages are in the kernel's page cache (RAM outside the process: 1.5 GB
of floats at 1M x 384): 32 reads took ~0.2 ms there, but ~11 ms when they had been evicted (random reads from
disk, measured on this machine's disk); a machine that cannot keep the file cached pays that on cold rows.

The quantizer learns each dimension's range from the first vectors added (the rest are clipped to it; the
exact re-scoring makes up for it); an index first fed fewer than TRAIN_MIN vectors learns a symmetric range
from them and relearns once it has TRAIN_MIN, at its next `compact` or `save`. Removal leaves tombstones as
`HNSWIndex` does. Vectors added since the index was last saved or loaded are held in memory until the next
`save` writes them to the file.

File: MAGIC, a JSON header (its length first, 8 bytes little-endian), the faiss graph, the ids (int64) and
the float vectors (float32, row-major), each block at the offset the header gives.
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .base import Places, check_ids, check_vectors, empty_result
from .faiss_index import omp_threads

MAGIC = b"LMHNSWSQ8\x001\n"  # the format's name and version
REFINE = 32  # candidates a search re-scores at least (2 k when more)
TRAIN_MIN = 1_000  # vectors the quantizer wants to learn per-dimension ranges from
TRAIN_SAMPLE = 100_000  # vectors at most it learns them from
COMPACT_CHUNK = 50_000  # vectors read back at a time when the graph is rebuilt
ALIGN = 64


class _Rows:
    """The float vectors by row: a prefix in a file (read with `pread`), the rest in memory."""

    def __init__(self, d: int) -> None:
        self.d = d
        self.row_bytes = 4 * d
        self._fd: int | None = None
        self._offset = 0  # where row 0 starts in the file
        self._n_file = 0  # rows in the file
        self._tail: list[np.ndarray] = []
        self._tail_array = np.empty((0, d), dtype=np.float32)
        self._n_tail = 0

    def __len__(self) -> int:
        return self._n_file + self._n_tail

    def append(self, xb: np.ndarray) -> None:
        self._tail.append(xb)
        self._n_tail += len(xb)

    def use_file(self, path: Path, offset: int, n: int) -> None:
        """Read rows [0, n) from `path` at `offset` from now on (the rows held in memory go)."""
        fd = os.open(path, os.O_RDONLY)
        self.close()
        self._fd, self._offset, self._n_file = fd, offset, n
        self._tail, self._tail_array, self._n_tail = [], np.empty((0, self.d), dtype=np.float32), 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def _tail_rows(self) -> np.ndarray:
        if len(self._tail_array) != self._n_tail:
            self._tail_array = np.vstack(self._tail) if self._tail else self._tail_array
            self._tail = [self._tail_array]
        return self._tail_array

    def get(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of `rows` (float32, (len(rows), d))."""
        out = np.empty((len(rows), self.d), dtype=np.float32)
        in_file = rows < self._n_file
        if in_file.any():
            assert self._fd is not None
            fd, size, base = self._fd, self.row_bytes, self._offset
            buf = b"".join(os.pread(fd, size, base + int(r) * size) for r in rows[in_file])
            out[in_file] = np.frombuffer(buf, dtype=np.float32).reshape(-1, self.d)
        if not in_file.all():
            out[~in_file] = self._tail_rows()[rows[~in_file] - self._n_file]
        return out

    def span(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) in order (float32)."""
        return self.get(np.arange(start, stop, dtype=np.int64)) if start < self._n_file else \
            self._tail_rows()[start - self._n_file:stop - self._n_file]

    def write(self, f: io.BufferedWriter, keep: np.ndarray) -> None:
        """Write the rows where `keep` (bool, (n,)) is true to `f`, in order, a chunk at a time."""
        for start in range(0, len(self), COMPACT_CHUNK):
            stop = min(start + COMPACT_CHUNK, len(self))
            f.write(np.ascontiguousarray(self.span(start, stop)[keep[start:stop]]).tobytes())


class HNSWSQ8Index:
    """Approximate inner-product search over unit vectors in ~a quarter of float HNSW's memory (see the module).

    Args:
        d: the vectors' width.
        m: HNSW graph degree (links per node; the layer-0 links are 2 m int32 a vector).
        ef_construction, ef_search: HNSW build and search beams (a search uses at least its candidate count).
        threads: OpenMP threads for a search (None: faiss' default).
    """

    kind = "hnsw_sq8"
    COMPACT_SHARE = 0.1  # tombstones past this share of the graph make `remove` compact it

    def __init__(self, d: int, *, m: int = 32, ef_construction: int = 64, ef_search: int = 128,
                 threads: int | None = None) -> None:
        self.d, self.m, self.ef_construction, self.ef_search, self.threads = d, m, ef_construction, ef_search, threads
        self._graph: Any = None  # faiss IndexHNSWSQ, made by the first add (its quantizer learns from it)
        self.trained_on = 0  # vectors the quantizer learnt its ranges from
        self._ids = np.empty(0, dtype=np.int64)  # row -> id (the graph's labels are rows)
        self._rows = _Rows(d)
        self._places = Places()
        self._gone = np.empty(0, dtype=np.int64)  # removed rows still in the graph (sorted)
        self._keep: Any = None  # the selector that filters them out of searches (with what it references)

    # --- building ---------------------------------------------------------------------------
    def _new_graph(self, xb: np.ndarray) -> None:
        graph = faiss.IndexHNSWSQ(self.d, faiss.ScalarQuantizer.QT_8bit, self.m,  # type: ignore[arg-type]
                                  faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.ef_construction
        sample = xb[np.random.default_rng(0).choice(len(xb), TRAIN_SAMPLE, replace=False)] \
            if len(xb) > TRAIN_SAMPLE else xb
        if len(sample) >= TRAIN_MIN:
            storage: Any = faiss.downcast_index(graph.storage)
            storage.sq.rangestat_arg = 0.05  # ranges widened by 5% each way for vectors to come
            graph.train(sample)
        else:  # too few to learn each dimension from: one symmetric range wide enough for these
            a = max(float(np.abs(sample).max()) * 1.5, 1e-3)
            graph.train(np.array([[-a] * self.d, [a] * self.d], dtype=np.float32))
        self._graph, self.trained_on = graph, len(sample)

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        xb = check_vectors(xb, self.d, "xb")
        ids = check_ids(ids, xb.shape[0])
        if not len(ids):
            return
        if self._graph is None:
            self._new_graph(xb)
        self._graph.add(xb)
        self._rows.append(xb.copy())
        self._ids = np.concatenate([self._ids, ids])

    def compact(self, *, retrain: bool = False) -> None:
        """Rebuild the graph from the vectors that stay (no tombstones left), relearning the quantizer's ranges
        when asked or when it learnt them from fewer than TRAIN_MIN vectors and more are here now."""
        retrain = retrain or (self.trained_on < TRAIN_MIN <= len(self))
        if not len(self._gone) and not retrain:
            return
        keep = np.ones(len(self._ids), dtype=bool)
        keep[self._gone] = False
        fresh = HNSWSQ8Index(self.d, m=self.m, ef_construction=self.ef_construction, ef_search=self.ef_search,
                             threads=self.threads)
        live = np.flatnonzero(keep)
        if len(live):
            first = live[:TRAIN_SAMPLE] if len(live) <= TRAIN_SAMPLE else \
                np.sort(np.random.default_rng(0).choice(live, TRAIN_SAMPLE, replace=False))
            fresh._new_graph(self._rows.get(first))
            for start in range(0, len(live), COMPACT_CHUNK):
                chunk = live[start:start + COMPACT_CHUNK]
                xb = self._rows.get(chunk)
                fresh._graph.add(xb)
                fresh._rows.append(xb)
            fresh._ids = self._ids[live]
        self._rows.close()
        self._graph, self.trained_on, self._ids, self._rows = fresh._graph, fresh.trained_on, fresh._ids, fresh._rows
        self._gone, self._keep = np.empty(0, dtype=np.int64), None

    # --- searching --------------------------------------------------------------------------
    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq = check_vectors(xq, self.d, "xq")
        if len(self) == 0 or k <= 0:
            return empty_result(xq.shape[0], k)
        kc = min(max(2 * k, REFINE), len(self))
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = max(self.ef_search, kc)
        if self._keep is not None:
            params.sel = self._keep[0]
        with omp_threads(self.threads):
            _, R = self._graph.search(xq, kc, params=params)
        D, I = empty_result(xq.shape[0], k)
        for q in range(xq.shape[0]):
            rows = R[q][R[q] >= 0]
            scores = self._rows.get(rows) @ xq[q]
            order = np.argsort(-scores, kind="stable")[:k]
            D[q, :len(order)], I[q, :len(order)] = scores[order], self._ids[rows[order]]
        return D, I

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self._rows.get(self._places.rows(self._ids, ids))

    # --- removing ---------------------------------------------------------------------------
    def remove(self, ids: np.ndarray) -> int:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        rows = np.flatnonzero(np.isin(self._ids, ids))
        rows = rows[~np.isin(rows, self._gone)]
        if not len(rows):
            return 0
        self._gone = np.union1d(self._gone, rows)
        if len(self._gone) > self.COMPACT_SHARE * len(self._ids):
            self.compact()
        else:
            batch = faiss.IDSelectorBatch(self._gone)
            self._keep = (faiss.IDSelectorNot(batch), batch)  # the batch must outlive the selector that wraps it
        return int(len(rows))

    def __len__(self) -> int:
        return len(self._ids) - len(self._gone)

    def _graph_bytes(self) -> int:
        """The graph's codes and links, counted from their arrays (no copy of a large index made to measure it)."""
        if self._graph is None:
            return 0
        storage: Any = faiss.downcast_index(self._graph.storage)
        hnsw = self._graph.hnsw
        return int(storage.codes.size() + 4 * hnsw.neighbors.size() + 4 * hnsw.levels.size()
                   + 8 * hnsw.offsets.size())

    def nbytes(self) -> int:
        """Bytes of the index: the graph with its codes and the ids in memory, and the float vectors (in the
        file, or in memory until the next save)."""
        return int(self._graph_bytes() + self._ids.nbytes + len(self._rows) * self._rows.row_bytes)

    def memory_bytes(self) -> int:
        """Bytes this index holds in the process (the float vectors in the file not counted)."""
        return int(self._graph_bytes() + self._ids.nbytes + self._rows._n_tail * self._rows.row_bytes)

    # --- files ------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the index to `path` (tombstones compacted first); its float vectors are read from there on."""
        self.compact()
        path = Path(path)
        tmp = path.with_name(path.name + ".writing")  # never over the file this index may be reading from
        n = len(self._ids)
        graph_bytes = 0
        with open(tmp, "wb") as f:
            head = {"d": self.d, "n": n, "m": self.m, "ef_construction": self.ef_construction,
                    "trained_on": self.trained_on}
            # the header's offsets depend on the graph's size, known once written: reserve room, fill in after
            f.write(MAGIC + struct.pack("<Q", 0) + b" " * 512)
            graph_at = f.tell()
            if self._graph is not None:
                faiss.write_index(self._graph, faiss.PyCallbackIOWriter(f.write))  # type: ignore[attr-defined]
            graph_bytes = f.tell() - graph_at
            f.write(b"\0" * (-f.tell() % ALIGN))
            ids_at = f.tell()
            f.write(self._ids.tobytes())
            f.write(b"\0" * (-f.tell() % ALIGN))
            vectors_at = f.tell()
            self._rows.write(f, np.ones(n, dtype=bool))
            head |= {"graph_at": graph_at, "graph_bytes": graph_bytes, "ids_at": ids_at, "vectors_at": vectors_at}
            blob = json.dumps(head).encode()
            if len(blob) > 512:
                raise ValueError("hnsw_sq8 header too long")
            f.seek(len(MAGIC))
            f.write(struct.pack("<Q", len(blob)) + blob)
        os.replace(tmp, path)
        self._rows.use_file(path, vectors_at, n)

    @classmethod
    def load(cls, path: Path, *, ef_search: int = 128, threads: int | None = None) -> HNSWSQ8Index:
        """The index saved at `path`. Raises ValueError on a file that is not one, or is cut short."""
        path = Path(path)
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise ValueError(f"{path} is not an hnsw_sq8 index file")
            blob = f.read(8)
            size = struct.unpack("<Q", blob)[0] if len(blob) == 8 else -1
            blob = f.read(size) if size > 0 else b""
            if size <= 0 or len(blob) < size:
                raise ValueError(f"{path} is cut short: no whole header")
            head = json.loads(blob)
            d, n = int(head["d"]), int(head["n"])
            if os.fstat(f.fileno()).st_size < head["vectors_at"] + n * d * 4:
                raise ValueError(f"{path} is cut short: {n} vectors of width {d} announced")
            index = cls(d, m=int(head["m"]), ef_construction=int(head["ef_construction"]), ef_search=ef_search,
                        threads=threads)
            if head["graph_bytes"]:
                f.seek(head["graph_at"])
                index._graph = faiss.read_index(faiss.PyCallbackIOReader(f.read))  # type: ignore[attr-defined]
            index.trained_on = int(head["trained_on"])
            f.seek(head["ids_at"])
            index._ids = np.frombuffer(f.read(8 * n), dtype=np.int64).copy()
        if index._graph is not None and index._graph.ntotal != n:
            raise ValueError(f"{path}: the graph holds {index._graph.ntotal} vectors, the file {n}")
        index._rows.use_file(path, int(head["vectors_at"]), n)
        return index
