"""Index backends behind one Protocol: `exact` (NumPy oracle), `flat` (faiss), `hnsw` (faiss, approximate)."""

from __future__ import annotations

from pathlib import Path

from ..config import MemoryConfig
from ..errors import ConfigError
from .base import Index
from .exact import ExactIndex
from .faiss_index import FlatIndex, HNSWIndex, load_faiss

KINDS = ("exact", "flat", "hnsw")

__all__ = ["Index", "ExactIndex", "FlatIndex", "HNSWIndex", "KINDS", "make_index", "load_index", "choose_kind"]


def choose_kind(n: int, config: MemoryConfig) -> str:
    """The configured kind, or for `auto`: `flat` (exact) while small, `hnsw` past `approx_threshold`."""
    if config.index_kind != "auto":
        return config.index_kind
    return "hnsw" if n > config.approx_threshold else "flat"


def make_index(kind: str, d: int, config: MemoryConfig | None = None) -> Index:
    config = config or MemoryConfig()
    if kind == "exact":
        return ExactIndex(d)
    if kind == "flat":
        return FlatIndex(d)
    if kind == "hnsw":
        return HNSWIndex(d, m=config.hnsw_m, ef_construction=config.hnsw_ef_construction,
                         ef_search=config.hnsw_ef_search)
    raise ConfigError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")


def load_index(path: Path, kind: str, config: MemoryConfig | None = None) -> Index:
    config = config or MemoryConfig()
    if kind == "exact":
        return ExactIndex.load(path)
    if kind in ("flat", "hnsw"):
        return load_faiss(path, kind, ef_search=config.hnsw_ef_search)
    raise ConfigError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
