"""Configuration of the memory: scoring weights, filtering thresholds, index choice."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .vocabulary import INDEX_CHOICES


def check_fields(config: object, checks: list[tuple[str, bool, str]]) -> None:
    """Raise a ConfigError naming the first field whose check failed, what it must be, and its value."""
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{type(config).__name__}.{name} must be {expected}, got {getattr(config, name)!r}")


@dataclass(frozen=True)
class MemoryConfig:
    """Every knob of `VectorMemory`, checked at construction."""

    # Scoring (DESIGN.md): score = w_sim*cos + w_util*(utility - 1/2) + w_rec*2^(-age/half_life)
    w_sim: float = 1.0  # weight of the trigger cosine similarity
    w_util: float = 0.2  # weight of the learned utility (Beta posterior mean, centred on 1/2)
    w_rec: float = 0.05  # weight of recency
    half_life_days: float = 30.0  # age at which the recency term halves
    min_sim: float = 0.2  # candidates under this cosine are dropped before MMR
    mmr_lambda: float = 0.7  # 1.0 = pure score, 0.0 = pure diversity
    fetch_k: int = 32  # candidates taken from the index before scoring (at least k)

    retrieve_consolidated: bool = True  # False: experiences an adapter holds leave the prompt
    # experience rows (texts) a process keeps of what its searches picked (a tenant that fits, whole, at its first
    # search), each while SQL's change log says it is unchanged; 0: every search reads its picks' rows. A searched
    # tenant's scoring columns (~22 bytes an experience) are held whole whatever this is.
    held_rows: int = 10_000

    # Filtering: which assistant turns become experiences
    min_success: float = 0.7  # estimated success probability a turn needs
    min_confidence: float = 0.5  # confidence in that estimate a turn needs

    # Dedup and merge
    dup_threshold: float = 0.95  # trigger cosine above which two experiences are near-duplicates
    agree_threshold: float = 0.6  # token Jaccard above which two responses agree
    strip_shared_instructions: bool = True  # embed requests without the instruction many of them share
    shared_min_count: int = 3  # a leading paragraph seen this often is a shared instruction

    # Index
    # auto (flat, then hnsw past approx_threshold, then hnsw_sq8 past compact_threshold), exact, flat, hnsw, hnsw_sq8
    # (HNSW over 8-bit codes re-scored from the float vectors in its file: a 1M-vector tenant in ~0.7 GB of the
    # process instead of ~1.9 GB, same recall; benchmarks/results/footprint.md), or
    # pgvector (vectors in PostgreSQL itself, searched there with an HNSW index: shared by every process and host)
    index_kind: str = "auto"
    # with auto: keep the vectors in PostgreSQL (pgvector) when the database is PostgreSQL and its server has pgvector
    # >= 0.8, so every process and host shares one index; else (or False) each process follows SQL with faiss
    shared_index: bool = False
    # a tenant past this many experiences gets the approximate (HNSW) index: where it turns faster than the exact scan
    # cold after the embedder, at a recall of the exact top 5 of ~0.998 (benchmarks/bench_index_cold.py)
    approx_threshold: int = 5_000
    compact_threshold: int = 500_000  # ... and past this many, hnsw_sq8 (0: never by itself)
    hnsw_m: int = 16  # HNSW graph degree (and pgvector's)
    hnsw_sq8_m: int = 32  # graph degree of hnsw_sq8 (at 1M, 16 saves 120 MiB but loses recall: 0.926 vs 0.963)
    # HNSW build beam (and pgvector's). A graph built with a wider beam is searched as well with a narrower one: at
    # 100k, m 16 built at 128 gives recall@10 0.986 with a search beam of 96, where m 32 built at 64 gave 0.978 with
    # 128, in ~0.55 ms instead of ~0.69 after an embedding (`indexes.ef_search_for`)
    hnsw_ef_construction: int = 128
    hnsw_sq8_ef_construction: int = 64  # hnsw_sq8's build beam (its 1M build takes ~10 min at 64)
    # HNSW search beam; 0: by the tenant's size and how its graph was built (`indexes.ef_search_for`: for the default
    # graph 96 up to ~100k, ~sqrt-growing to 300 at 1M; for a graph built at 64, hnsw_sq8's or an earlier version's
    # file, 128 up to ~110k and 384 at 1M: benchmarks/results/retrieval.md, index_cold.md)
    hnsw_ef_search: int = 0
    search_threads: int = 1  # faiss OpenMP threads for one query (more is slower on 2 cores)

    # Ingest
    batch_size: int = 256  # records per SQL transaction (and embedding call)
    # threads an ingest embeds on at once, each its share of a window's requests; 0: the cores this process may use
    # divided by the embedder's own `threads` (an embedder without that attribute: 1). On 2 cores with the default
    # ONNX MiniLM (1 thread) 2: the embedding, ~90% of an ingest, otherwise leaves a core idle
    embed_workers: int = 0

    # Index files (SQL is the truth; a file spares the next process a rebuild)
    checkpoint_changes: int = 64  # a tenant's index file is rewritten after this many writes to its vectors ...
    checkpoint_seconds: float = 300.0  # ... or when it is this old and changed (and always on close)
    # SQL logs which experience ids each generation added or removed; a process follows by applying them. The
    # log keeps a tenant's last this many generations (trimmed when a file is written); a process further behind
    # rebuilds from SQL instead.
    change_log_generations: int = 10_000

    def __post_init__(self) -> None:
        for name in ("w_sim", "w_util", "w_rec"):
            if getattr(self, name) < 0:
                raise ConfigError(f"MemoryConfig.{name} must be >= 0, got {getattr(self, name)}")
        checks = [
            ("half_life_days", self.half_life_days > 0, "> 0"),
            ("min_sim", -1.0 <= self.min_sim <= 1.0, "in [-1, 1]"),
            ("mmr_lambda", 0.0 <= self.mmr_lambda <= 1.0, "in [0, 1]"),
            ("fetch_k", self.fetch_k >= 1, ">= 1"),
            ("held_rows", self.held_rows >= 0, ">= 0 (0: none)"),
            ("min_success", 0.0 <= self.min_success <= 1.0, "in [0, 1]"),
            ("min_confidence", 0.0 <= self.min_confidence <= 1.0, "in [0, 1]"),
            ("dup_threshold", 0.0 < self.dup_threshold <= 1.0, "in (0, 1]"),
            ("agree_threshold", 0.0 <= self.agree_threshold <= 1.0, "in [0, 1]"),
            ("shared_min_count", self.shared_min_count >= 2, ">= 2"),
            ("approx_threshold", self.approx_threshold >= 1, ">= 1"),
            ("compact_threshold", self.compact_threshold >= 0, ">= 0"),
            ("hnsw_m", self.hnsw_m >= 4, ">= 4"),
            ("hnsw_sq8_m", self.hnsw_sq8_m >= 4, ">= 4"),
            ("hnsw_ef_construction", self.hnsw_ef_construction >= 1, ">= 1"),
            ("hnsw_sq8_ef_construction", self.hnsw_sq8_ef_construction >= 1, ">= 1"),
            ("hnsw_ef_search", self.hnsw_ef_search >= 0, ">= 0 (0: by size)"),
            ("search_threads", self.search_threads >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("embed_workers", self.embed_workers >= 0, ">= 0 (0: by the cores)"),
            ("checkpoint_changes", self.checkpoint_changes >= 1, ">= 1"),
            ("checkpoint_seconds", self.checkpoint_seconds >= 0, ">= 0"),
            ("change_log_generations", self.change_log_generations >= 1, ">= 1"),
            ("index_kind", self.index_kind in INDEX_CHOICES,
             f"{', '.join(INDEX_CHOICES[:-1])} or {INDEX_CHOICES[-1]}"),
        ]
        check_fields(self, checks)
