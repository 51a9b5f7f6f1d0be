"""Index backends behind one Protocol, by kind: `exact` (NumPy oracle), `flat` (faiss), `hnsw` (faiss, approximate),
`hnsw_sq8` (faiss HNSW over 8-bit codes, re-scored from float vectors kept in its file: ~a quarter of `hnsw`'s
memory), and `pgvector` (PostgreSQL, registered by `logmem.memory.store.vectors` when imported).

The registry maps a kind to how to make an empty index and how to load a saved one. It knows nothing of
`MemoryConfig`: a caller passes the settings a backend takes as keyword arguments (`m`, `sq8_m`, `sq8_ef_construction`,
`ef_construction`, `ef_search`, `threads`), and a backend ignores those it has no use for. The per-tenant index
cache, which follows SQL, is the memory layer's (`logmem.memory.indexes`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import Index
from .compact import HNSWSQ8Index
from .exact import ExactIndex
from .faiss_index import FlatIndex, HNSWIndex, load_faiss


@dataclass(frozen=True)
class Backend:
    """How to make an empty index of one kind, and how to read one back from a file `save` wrote."""

    make: Callable[..., Index]  # (d, **settings) -> Index
    load: Callable[..., Index]  # (path, **settings) -> Index
    durable: bool = False  # the index lives in the database, written in the rows' transaction (no file, no cache)


_BACKENDS: dict[str, Backend] = {}


def register(kind: str, backend: Backend) -> None:
    """Make `kind` available to `make_index` and `load_index` (a later registration of a kind replaces it)."""
    _BACKENDS[kind] = backend


def kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(_BACKENDS)


def _backend(kind: str) -> Backend:
    try:
        return _BACKENDS[kind]
    except KeyError:
        raise ConfigError(f"unknown index kind {kind!r}; expected one of {', '.join(_BACKENDS)}") from None


def is_durable(kind: str) -> bool:
    """Whether `kind` keeps its vectors in the database itself (then a process has nothing to follow)."""
    return _backend(kind).durable


def make_index(kind: str, d: int, **settings: Any) -> Index:
    """An empty index of `kind` over `d`-dimensional vectors."""
    return _backend(kind).make(d, **settings)


def load_index(path: Path, kind: str, **settings: Any) -> Index:
    """The index of `kind` saved at `path`. Raises ValueError, KeyError or RuntimeError on a damaged file."""
    return _backend(kind).load(path, **settings)


def _make_hnsw(d: int, *, m: int = 32, ef_construction: int = 64, ef_search: int = 128, threads: int | None = None,
               **_: Any) -> Index:
    return HNSWIndex(d, m=m, ef_construction=ef_construction, ef_search=ef_search, threads=threads)


register("exact", Backend(make=lambda d, **_: ExactIndex(d), load=lambda path, **_: ExactIndex.load(path)))
register("flat", Backend(make=lambda d, *, threads=None, **_: FlatIndex(d, threads=threads),
                         load=lambda path, *, threads=None, **_: load_faiss(path, "flat", threads=threads)))
register("hnsw", Backend(make=_make_hnsw,
                         load=lambda path, *, ef_search=128, threads=None, **_: load_faiss(
                             path, "hnsw", ef_search=ef_search, threads=threads)))

def _make_hnsw_sq8(d: int, *, sq8_m: int = 32, sq8_ef_construction: int = 64, ef_search: int = 128,
                   threads: int | None = None, **_: Any) -> Index:
    return HNSWSQ8Index(d, m=sq8_m, ef_construction=sq8_ef_construction, ef_search=ef_search, threads=threads)


register("hnsw_sq8", Backend(make=_make_hnsw_sq8,
                             load=lambda path, *, ef_search=128, threads=None, **_: HNSWSQ8Index.load(
                                 path, ef_search=ef_search, threads=threads)))

KINDS = kinds()  # the built-in kinds

__all__ = ["Backend", "Index", "ExactIndex", "FlatIndex", "HNSWIndex", "HNSWSQ8Index", "KINDS", "is_durable", "kinds",
           "load_index", "make_index", "register"]
