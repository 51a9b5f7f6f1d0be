"""The index contract: every backend behaves like the exact NumPy oracle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from logmem.memory import DimensionMismatchError, MemoryConfig
from logmem.memory.errors import ConfigError
from logmem.memory.index import KINDS, ExactIndex, Index, load_index, make_index
from logmem.memory.indexes import choose_kind, ef_search_for, index_settings

D_WIDTH = 16


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, xb, xq): 300 unit vectors under sparse, shuffled int64 ids, and 20 queries."""
    rng = np.random.default_rng(0)
    ids = rng.choice(1_000_000, size=300, replace=False).astype(np.int64)
    return ids, unit_rows(rng, 300, D_WIDTH), unit_rows(rng, 20, D_WIDTH)


def filled(kind: str, ids: np.ndarray, xb: np.ndarray, **settings: Any) -> Index:
    index = make_index(kind, xb.shape[1], **settings)
    index.add(ids, xb)
    return index


def oracle(ids: np.ndarray, xb: np.ndarray) -> ExactIndex:
    index = ExactIndex(xb.shape[1])
    index.add(ids, xb)
    return index


@pytest.fixture
def settings(kind: str, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """What `make_index` needs beyond the kind: for pgvector, a database (a fresh one on the real server) and
    a tenant, beside another tenant's vectors that the contract's every answer must leave out."""
    if kind != "pgvector":
        yield {}
        return
    from logmem.memory.indexes import ensure_registered
    from sqlalchemy import create_engine

    ensure_registered("pgvector")  # its backend lives with the store, registered where asked for
    engine = create_engine(request.getfixturevalue("pgvector_db"))
    rng = np.random.default_rng(1)
    make_index("pgvector", D_WIDTH, engine=engine, tenant="other").add(
        np.arange(10**7, 10**7 + 200), unit_rows(rng, 200, D_WIDTH))
    yield {"engine": engine, "tenant": "mine"}
    engine.dispose()


@pytest.mark.parametrize("kind", [*KINDS, pytest.param("pgvector", marks=pytest.mark.postgres)])
class TestContract:
    def test_meets_the_protocol(self, kind: str, settings: dict) -> None:
        index = make_index(kind, D_WIDTH, **settings)

        assert isinstance(index, Index)
        assert index.kind == kind and index.d == D_WIDTH and len(index) == 0

    def test_search_matches_the_oracle(self, kind: str, settings: dict, data: tuple) -> None:
        ids, xb, xq = data
        index = filled(kind, ids, xb, **settings)

        D, I = index.search(xq, 10)

        D0, I0 = oracle(ids, xb).search(xq, 10)
        assert D.shape == I.shape == (20, 10) and D.dtype == np.float32 and I.dtype == np.int64
        np.testing.assert_array_equal(I, I0)
        np.testing.assert_allclose(D, D0, atol=1e-5)

    def test_scores_are_inner_products_best_first(self, kind: str, settings: dict, data: tuple) -> None:
        ids, xb, xq = data
        index = filled(kind, ids, xb, **settings)

        D, I = index.search(xq, 5)

        row_of = {int(i): r for r, i in enumerate(ids)}
        want = np.array([[xq[q] @ xb[row_of[int(i)]] for i in I[q]] for q in range(len(xq))])
        np.testing.assert_allclose(D, want, atol=1e-5)
        assert (np.diff(D, axis=1) <= 1e-6).all()

    @pytest.mark.parametrize("order", ["shuffled", "increasing"])  # (as SQL adds them: looked up in place)
    def test_gives_back_the_vectors_of_its_ids(self, kind: str, settings: dict, data: tuple, order: str,
                                               tmp_path: Path) -> None:
        ids, xb, _ = data
        ids = np.sort(ids) if order == "increasing" else ids
        index = filled(kind, ids, xb, **settings)
        order = np.random.default_rng(2).permutation(len(ids))[:40]

        np.testing.assert_array_equal(index.vectors(ids[order]), xb[order])
        with pytest.raises(KeyError):
            index.vectors(np.array([ids[0], 123_456_789_012]))
        index.remove(ids[:10])
        index.add(ids[:3], xb[3:6])  # three ids come back, with other vectors
        if kind != "pgvector":  # (pgvector's rows live in the database: saving writes only what the index is)
            index.save(tmp_path / "index")
            index = load_index(tmp_path / "index", kind, **settings)
        np.testing.assert_array_equal(index.vectors(ids[[20, 0, 2, 11]]), np.vstack([xb[20], xb[3], xb[5], xb[11]]))

    def test_a_stored_vector_finds_itself(self, kind: str, settings: dict, data: tuple) -> None:
        ids, xb, _ = data
        index = filled(kind, ids, xb, **settings)

        _, I = index.search(xb[:50], 1)

        assert I[:, 0].tolist() == ids[:50].tolist()

    def test_one_dimensional_query_is_one_query(self, kind: str, settings: dict, data: tuple) -> None:
        ids, xb, xq = data
        index = filled(kind, ids, xb, **settings)

        D, I = index.search(xq[0], 3)

        assert D.shape == I.shape == (1, 3)
        assert I[0].tolist() == index.search(xq[:1], 3)[1][0].tolist()

    def test_search_of_an_empty_index_is_padded(self, kind: str, settings: dict) -> None:
        index = make_index(kind, D_WIDTH, **settings)

        D, I = index.search(np.ones((3, D_WIDTH), dtype=np.float32), 4)

        assert D.shape == I.shape == (3, 4) and D.dtype == np.float32 and I.dtype == np.int64
        assert np.isneginf(D).all() and (I == -1).all()

    def test_k_over_n_pads_the_tail(self, kind: str, settings: dict, data: tuple) -> None:
        ids, xb, xq = data
        index = filled(kind, ids[:5], xb[:5], **settings)

        D, I = index.search(xq[:2], 8)

        assert D.shape == I.shape == (2, 8)
        for q in range(2):
            assert sorted(I[q, :5].tolist()) == sorted(ids[:5].tolist())
            assert np.isfinite(D[q, :5]).all()
        assert np.isneginf(D[:, 5:]).all() and (I[:, 5:] == -1).all()

    def test_remove_then_search_never_returns_removed_ids(self, kind: str, settings: dict, data: tuple) -> None:
        ids, xb, xq = data
        index = filled(kind, ids, xb, **settings)
        gone = ids[::3]

        removed = index.remove(gone)

        assert removed == len(gone)
        assert len(index) == len(ids) - len(gone)
        _, I = index.search(np.vstack([xq, xb[::3]]), len(ids))
        found = set(I[I >= 0].tolist())
        assert found.isdisjoint(gone.tolist())
        assert found == set(ids.tolist()) - set(gone.tolist())
        assert index.remove(gone) == 0  # already gone
        assert index.remove(np.array([-5, 10**12], dtype=np.int64)) == 0
        assert len(index) == len(ids) - len(gone)

    def test_remove_everything_leaves_an_empty_searchable_index(self, kind: str, settings: dict, data: tuple) -> None:
        ids, xb, xq = data
        index = filled(kind, ids[:10], xb[:10], **settings)

        assert index.remove(ids[:10]) == 10

        D, I = index.search(xq[:1], 3)
        assert len(index) == 0 and (I == -1).all() and np.isneginf(D).all()

    def test_adds_accumulate(self, kind: str, settings: dict, data: tuple) -> None:
        ids, xb, xq = data
        index = make_index(kind, D_WIDTH, **settings)

        index.add(ids[:100], xb[:100])
        index.add(ids[100:], xb[100:])

        assert len(index) == len(ids)
        np.testing.assert_array_equal(index.search(xq, 5)[1], oracle(ids, xb).search(xq, 5)[1])

    def test_save_and_load_round_trip(self, kind: str, settings: dict, data: tuple, tmp_path: Path) -> None:
        ids, xb, xq = data
        index = filled(kind, ids, xb, **settings)
        index.remove(ids[:7])
        before = index.search(xq, 10)

        index.save(tmp_path / "ix")
        loaded = load_index(tmp_path / "ix", kind, **settings)

        assert loaded.kind == kind and loaded.d == D_WIDTH and len(loaded) == len(ids) - 7
        after = loaded.search(xq, 10)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_allclose(after[0], before[0], atol=1e-6)
        assert index.nbytes() > 0 and loaded.nbytes() > 0

    def test_wrong_width_raises(self, kind: str, settings: dict, data: tuple) -> None:
        ids, xb, _ = data
        index = filled(kind, ids, xb, **settings)

        with pytest.raises(DimensionMismatchError, match=r"xb must have shape \(n, 16\), got \(5, 8\)"):
            index.add(np.arange(5), np.zeros((5, 8), dtype=np.float32))
        with pytest.raises(DimensionMismatchError, match=r"xq must have shape \(n, 16\), got \(2, 17\)"):
            index.search(np.zeros((2, 17), dtype=np.float32), 3)
        with pytest.raises(DimensionMismatchError, match=r"xq must have shape \(n, 16\), got \(2, 2, 16\)"):
            index.search(np.zeros((2, 2, 16), dtype=np.float32), 3)
        assert len(index) == len(ids)  # nothing half-added

    def test_is_empty_says_what_len_says(self, kind: str, settings: dict, data: tuple) -> None:
        from logmem.memory.indexes import is_empty

        ids, xb, _ = data
        index = make_index(kind, D_WIDTH, **settings)
        assert is_empty(index)
        index.add(ids[:3], xb[:3])
        assert not is_empty(index)
        index.remove(ids[:3])
        assert is_empty(index) and len(index) == 0

    def test_ids_must_match_the_vectors(self, kind: str, settings: dict, data: tuple) -> None:
        _, xb, _ = data
        index = make_index(kind, D_WIDTH, **settings)

        with pytest.raises(DimensionMismatchError, match="got 3 ids for 5 vectors"):
            index.add(np.arange(3), xb[:5])
        assert len(index) == 0


def clustered(rng: np.random.Generator, n: int, d: int, n_clusters: int, spread: float) -> np.ndarray:
    centres = unit_rows(rng, n_clusters, d)
    x = centres[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_hnsw_recall_on_clustered_vectors() -> None:
    rng = np.random.default_rng(0)
    xb = clustered(rng, 2_000, 32, n_clusters=20, spread=0.15)
    xq = clustered(rng, 200, 32, n_clusters=20, spread=0.15)
    ids = np.arange(len(xb), dtype=np.int64) * 7
    hnsw = filled("hnsw", ids, xb)

    _, I = hnsw.search(xq, 10)

    _, I0 = oracle(ids, xb).search(xq, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I.tolist(), I0.tolist())])
    assert recall >= 0.95


def test_hnsw_keeps_its_settings_through_save_and_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    config = MemoryConfig(hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=77)
    index = make_index("hnsw", 8, **index_settings(config))
    index.add(np.arange(50), unit_rows(rng, 50, 8))

    index.save(tmp_path / "h")
    loaded = load_index(tmp_path / "h", "hnsw", **index_settings(config))

    assert (loaded.m, loaded.ef_construction, loaded.ef_search) == (8, 40, 77)  # type: ignore[attr-defined]


def test_the_hnsw_beam_by_size() -> None:
    """`hnsw_ef_search` 0: for a graph built at 64 or not known, 128 while small, 384 at 1M (sqrt-growing between);
    for one built at 128 or more, 96 while small, 300 at 1M; at most 512. A configured beam is kept at any size;
    pgvector and a fresh faiss index start with the 1M one of a graph not known."""
    auto = MemoryConfig()
    sizes = (0, 100_000, 250_000, 1_000_000, 10**7)
    assert [ef_search_for(n, auto) for n in sizes] == [128, 128, 192, 384, 512]
    assert [ef_search_for(n, auto, 64) for n in sizes] == [128, 128, 192, 384, 512]
    assert [ef_search_for(n, auto, 128) for n in sizes] == [96, 96, 150, 300, 512]
    assert [ef_search_for(n, auto, 200) for n in sizes] == [96, 96, 150, 300, 512]
    assert ef_search_for(10**6, MemoryConfig(hnsw_ef_search=77), 128) == 77
    assert index_settings(auto)["ef_search"] == 384


def test_choose_kind() -> None:
    auto = MemoryConfig(approx_threshold=100)

    assert choose_kind(100, auto) == "flat"
    assert choose_kind(101, auto) == "hnsw"
    assert choose_kind(10**6, MemoryConfig(index_kind="exact")) == "exact"
    assert choose_kind(500_000, MemoryConfig()) == "hnsw" and choose_kind(500_001, MemoryConfig()) == "hnsw_sq8"
    assert choose_kind(10**7, MemoryConfig(compact_threshold=0)) == "hnsw"


def test_unknown_kind_raises() -> None:
    with pytest.raises(ConfigError, match="unknown index kind 'ivf'"):
        make_index("ivf", 4)
    with pytest.raises(ConfigError, match="unknown index kind 'ivf'"):
        load_index(Path("nowhere"), "ivf")


@pytest.mark.parametrize(("kind", "error", "pattern"), [("exact", ValueError, "is not an exact index file"),
                                                       ("flat", RuntimeError, "read error"),
                                                       ("hnsw", RuntimeError, "read error"),
                                                       ("hnsw_sq8", ValueError, "is cut short")])
def test_loading_a_truncated_file_raises(kind: str, error: type, pattern: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    index = make_index(kind, 8)
    index.add(np.arange(20), unit_rows(rng, 20, 8))
    index.save(tmp_path / "ix")
    (tmp_path / "ix").write_bytes((tmp_path / "ix").read_bytes()[:40])

    with pytest.raises(error, match=pattern):  # VectorMemory rebuilds from SQL on these errors
        load_index(tmp_path / "ix", kind)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_faiss_searches_on_the_configured_threads_and_sets_them_back(kind: str) -> None:
    import faiss

    rng = np.random.default_rng(0)
    index = make_index(kind, 8, **index_settings(MemoryConfig(search_threads=1)))
    index.add(np.arange(50), unit_rows(rng, 50, 8))
    seen: list[int] = []
    inner = index._index  # type: ignore[attr-defined]

    class Spy:  # the faiss index, reporting the OpenMP threads in force when it is searched
        def __getattr__(self, name: str) -> object:
            return getattr(inner, name)

        def search(self, xq: np.ndarray, k: int) -> object:
            seen.append(faiss.omp_get_max_threads())
            return inner.search(xq, k)

    index._index = Spy()  # type: ignore[attr-defined]
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        index.search(unit_rows(rng, 1, 8), 3)
        assert seen == [1]
        assert faiss.omp_get_max_threads() == 2  # a batch elsewhere in this thread keeps its threads
    finally:
        faiss.omp_set_num_threads(before)


def test_the_registry_takes_a_new_kind(tmp_path: Path) -> None:
    from logmem.memory.index import Backend, kinds, register

    register("exact-copy", Backend(make=lambda d, **_: ExactIndex(d), load=lambda path, **_: ExactIndex.load(path)))
    try:
        index = make_index("exact-copy", 4, m=8, threads=1)  # settings it has no use for are ignored
        assert isinstance(index, ExactIndex) and "exact-copy" in kinds()
    finally:
        from logmem.memory import index as registry

        registry._BACKENDS.pop("exact-copy")


def test_hnsw_removes_by_tombstones_and_compacts_on_save(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xb = clustered(rng, 1_000, 16, n_clusters=10, spread=0.2)
    ids = np.arange(1_000, dtype=np.int64)
    index = filled("hnsw", ids, xb)
    graph = index._index  # type: ignore[attr-defined]

    assert index.remove(ids[:50]) == 50 and index.remove(ids[:60]) == 10  # 60 < 10%: no compaction yet

    assert index._index is graph and graph.ntotal == 1_000 and len(index) == 940  # type: ignore[attr-defined]
    _, I = index.search(xb[:100], 10)
    assert not np.isin(I, ids[:60]).any() and (I[60:, 0] == ids[60:100]).all()
    index.add(ids[:1], xb[500:501])  # an id comes back with another vector: the graph is compacted first
    assert index._index is not graph and len(index) == 941  # type: ignore[attr-defined]
    assert index.search(xb[500:501], 2)[1][0].tolist() in ([0, 500], [500, 0])
    index.remove(ids[100:120])
    index.save(tmp_path / "h")
    loaded = load_index(tmp_path / "h", "hnsw")
    assert len(loaded) == len(index) == 921 and loaded._index.ntotal == 921  # type: ignore[attr-defined]
    assert index.remove(ids[200:400]) == 200 and index._index.ntotal == 721  # type: ignore[attr-defined]


def test_an_unknown_index_kind_in_the_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="MemoryConfig.index_kind must be auto, exact, flat, hnsw, hnsw_sq8 or "
                                          "pgvector, got 'ivf'"):
        MemoryConfig(index_kind="ivf")
    assert MemoryConfig(index_kind="hnsw_sq8").index_kind == "hnsw_sq8"


def test_hnsw_sq8_learns_its_ranges_and_keeps_the_float_vectors_in_its_file(tmp_path: Path) -> None:
    from logmem.memory.index import HNSWSQ8Index

    rng = np.random.default_rng(0)
    xb = clustered(rng, 3_000, 32, n_clusters=30, spread=0.2)
    xq = clustered(rng, 100, 32, n_clusters=30, spread=0.2)
    ids = np.arange(len(xb), dtype=np.int64) * 3 + 1
    index = filled("hnsw_sq8", ids, xb, **index_settings(MemoryConfig(hnsw_sq8_m=12, hnsw_ef_search=100)))
    assert isinstance(index, HNSWSQ8Index) and index.trained_on == 3_000 and index.m == 12
    in_memory = index.memory_bytes()

    index.save(tmp_path / "q")
    loaded = load_index(tmp_path / "q", "hnsw_sq8", ef_search=100)

    floats = 3_000 * 32 * 4
    assert index.memory_bytes() <= in_memory - floats  # saved: the vectors are read from the file from now on
    assert loaded.memory_bytes() == index.memory_bytes()  # type: ignore[attr-defined]
    assert loaded.nbytes() >= floats + 3_000 * 32  # the file holds them, beside the 8-bit codes
    D, I = loaded.search(xq, 10)
    D0, I0 = oracle(ids, xb).search(xq, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I.tolist(), I0.tolist())])
    assert recall >= 0.95
    row_of = {int(i): r for r, i in enumerate(ids)}
    exact = np.array([[xq[q] @ xb[row_of[int(i)]] for i in I[q]] for q in range(len(xq))])
    np.testing.assert_allclose(D, exact, atol=1e-5)  # re-scored from the float vectors, not the codes


def test_hnsw_sq8_removes_by_tombstones_takes_back_an_id_and_compacts_on_save(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xb = clustered(rng, 1_000, 16, n_clusters=10, spread=0.2)
    ids = np.arange(1_000, dtype=np.int64)
    index = filled("hnsw_sq8", ids, xb)
    graph = index._graph  # type: ignore[attr-defined]

    assert index.remove(ids[:50]) == 50 and index.remove(ids[:60]) == 10  # 60 < 10%: no compaction yet

    assert index._graph is graph and graph.ntotal == 1_000 and len(index) == 940  # type: ignore[attr-defined]
    _, I = index.search(xb[:100], 10)
    assert not np.isin(I, ids[:60]).any() and (I[60:, 0] == ids[60:100]).all()
    index.add(ids[:1], xb[500:501])  # an id comes back with another vector (SQLite reuses ids)
    assert len(index) == 941
    assert sorted(index.search(xb[500:501], 2)[1][0].tolist()) == [0, 500]
    assert 0 not in index.search(xb[:1], 5)[1][0].tolist()  # its old vector stays gone
    index.save(tmp_path / "q")
    loaded = load_index(tmp_path / "q", "hnsw_sq8")
    assert len(loaded) == 941 and loaded._graph.ntotal == 941  # type: ignore[attr-defined]
    assert sorted(loaded.search(xb[500:501], 2)[1][0].tolist()) == [0, 500]
    assert index.remove(ids[200:400]) == 200 and index._graph.ntotal == 741  # type: ignore[attr-defined]


def test_hnsw_sq8_first_fed_a_few_relearns_its_ranges_once_it_has_enough(tmp_path: Path) -> None:
    from logmem.memory.index.compact import TRAIN_MIN

    rng = np.random.default_rng(0)
    xb = clustered(rng, TRAIN_MIN + 200, 16, n_clusters=10, spread=0.2)
    index = make_index("hnsw_sq8", 16)
    index.add(np.arange(5), xb[:5])
    assert index.trained_on == 5  # type: ignore[attr-defined]
    index.add(np.arange(5, len(xb)), xb[5:])

    index.save(tmp_path / "q")

    assert index.trained_on == len(xb) and len(index) == len(xb)  # type: ignore[attr-defined]
    _, I = load_index(tmp_path / "q", "hnsw_sq8").search(xb[:50], 1)
    assert I[:, 0].tolist() == list(range(50))
