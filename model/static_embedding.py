"""A static embedder distilled from a sentence-transformers folder: one vector per vocabulary token.

Each token's vector is what the folder's own transformer (its ONNX export, `onnx_embedding.py`) gives that
token alone between the tokenizer's special tokens, mean-pooled; a text's vector is the mean of its tokens'
vectors, L2-normalised. This is the idea of Model2Vec (Tulkens and van Dongen, 2024, "static embeddings
distilled from a sentence transformer"), without its PCA and frequency weighting (neither helped in a probe
on NFCats).

Encoding is a table lookup and a mean: ~0.3 ms for a request's text against ~5-20 ms for MiniLM's forward
pass on one CPU core, which is what a proxy in front of a fast server adds before the first token. It pays for
that in neighbours: the kNN vote on NFCats test falls from 0.694 to 0.579
(`benchmarks/results/quality_static/knn_test.md`), so it is opt-in, for latency first. The vectors are not
MiniLM's: a memory built with one cannot be searched with the other (the name differs).
The table (vocabulary x dim float32, 47 MB for MiniLM) is computed once per folder and cached beside the
ONNX export, under a file lock, written whole or not at all.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from logmem.model.onnx_embedding import OnnxEmbedder, write_once
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["StaticEmbedder", "token_table"]

logger = logging.getLogger(__name__)
_TABLE = "static-tokens.npy"


def token_table(onnx: OnnxEmbedder, batch: int = 2048, progress: bool = True) -> np.ndarray:
    """(vocabulary, dim) float32: each token's mean-pooled output alone between the special tokens."""
    session, tokenizer, inputs, _ = onnx._load()
    specials = tokenizer.encode("").ids  # e.g. [CLS] [SEP]
    head, tail = specials[:1], specials[1:]
    vocab = tokenizer.get_vocab_size()
    table = np.empty((vocab, onnx.dim), dtype=np.float32)
    for start in tqdm(range(0, vocab, batch), desc="static token table", unit="batch", disable=not progress):
        ids = np.arange(start, min(vocab, start + batch), dtype=np.int64)[:, None]
        rows = np.concatenate([np.full((len(ids), len(head)), head, dtype=np.int64), ids,
                               np.full((len(ids), len(tail)), tail, dtype=np.int64)], axis=1)
        columns = {"input_ids": rows, "attention_mask": np.ones_like(rows), "token_type_ids": np.zeros_like(rows)}
        (hidden,) = session.run(["last_hidden_state"], {name: columns[name] for name in inputs})
        table[start:start + len(ids)] = hidden.mean(axis=1)
    return table


class StaticEmbedder:
    """An `Embedder` whose vectors are means of per-token vectors distilled from a sentence-transformers folder.

    Args:
        path: a local sentence-transformers folder; None means the bundled all-MiniLM-L6-v2.
        cache_dir: where the ONNX export and the token table are kept (`default_embedder` passes
            `<home>/embedders`).
        threads: onnxruntime threads for computing the table (once per folder); encoding needs none.
        name: stable identifier stored with the memory; default `<the folder's name>-static`.

    Raises:
        EmbedderNotFoundError, UnsupportedEmbedderError: as `OnnxEmbedder` for the same folder.
    """

    def __init__(self, path: str | Path | None = None, *, cache_dir: str | Path, threads: int | None = None,
                 name: str | None = None, show_progress: bool = False) -> None:
        self._onnx = OnnxEmbedder(path, cache_dir=cache_dir, threads=threads or os.cpu_count() or 1,
                                  query_cache=0)
        self._name = name or f"{self._onnx.name}-static"
        self.show_progress = show_progress
        self._loaded: tuple[np.ndarray, Tokenizer] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StaticEmbedder(name={self._name!r}, path={str(self._onnx.path)!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._onnx.dim

    def _load(self) -> tuple[np.ndarray, Tokenizer]:
        with self._lock:
            if self._loaded is None:
                _, tokenizer, _, _ = self._onnx._load()
                assert self._onnx.onnx_path is not None  # set by _load
                table = self._cached_table(self._onnx.onnx_path.parent / _TABLE)
                plain = type(tokenizer).from_str(tokenizer.to_str())  # a private copy: every token counts
                plain.no_truncation()
                self._loaded = (table, plain)
            return self._loaded

    def _cached_table(self, path: Path) -> np.ndarray:
        def compute(tmp: Path) -> None:
            logger.info("computing the static token table of %s at %s (once)", self._onnx.name, path)
            with tmp.open("wb") as fh:  # a file object: np.save would add ".npy" to a path
                np.save(fh, token_table(self._onnx, progress=self.show_progress))

        write_once(path, path.parent / f".{path.name}.lock", compute)
        table = np.load(path)
        if table.ndim != 2 or table.shape[1] != self.dim:
            raise ValueError(f"{path}: expected a (vocabulary, {self.dim}) table, found shape {table.shape}")
        return table

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts`: the mean of their tokens' vectors, unit L2 norm; zero rows for empty text."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of strings, not a single string")
        table, tokenizer = self._load()
        texts = [t.lower() for t in texts] if self._onnx.spec.lowercase else list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)] if texts else []
        keep = [i for i, row in enumerate(ids) if row and texts[i].strip()]
        if not keep:
            return out
        lengths = np.array([len(ids[i]) for i in keep])
        flat = np.fromiter((t for i in keep for t in ids[i]), dtype=np.int64, count=int(lengths.sum()))
        sums = np.add.reduceat(table[flat], np.concatenate([[0], np.cumsum(lengths)[:-1]]), axis=0)
        sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        out[keep] = sums
        return out
