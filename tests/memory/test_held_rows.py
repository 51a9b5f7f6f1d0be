"""The rows a process's searches hold (`HeldRows`): read from SQL once while nothing changes (a small tenant whole, at
its first search), and never stale: what another process (another memory on the same database) changes of an
experience, its utility, its consolidation or its existence, this one's next search sees, re-reading those rows alone
while the change log reaches back; forgetting drops the held text at once. SQLite and a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from liked import QA, rec
from logmem.memory import Embedder, MemoryConfig, VectorMemory, kernels
from logmem.memory.held import Columns, scoring_params
from logmem.memory.store import ExperienceData, ScoringColumns


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def pair(request: pytest.FixtureRequest, tmp_path: Path, embedder: Embedder) -> Iterator[tuple[VectorMemory, ...]]:
    """Two memories with their own homes on one database (two processes), the first holding every candidate."""
    url = (f"sqlite:///{tmp_path / 'shared.db'}" if request.param == "sqlite"
           else str(request.getfixturevalue("pg_db")))
    config = MemoryConfig(min_sim=-1.0, retrieve_consolidated=False)
    with VectorMemory(tmp_path / "one", embedder=embedder, db_url=url, config=config) as one, \
            VectorMemory(tmp_path / "two", embedder=embedder, db_url=url, config=config) as two:
        one.ingest([rec(i) for i in range(len(QA))])
        yield one, two


def top(vm: VectorMemory, i: int = 0) -> Any:
    return vm.search(QA[i][0], 1, tenant="acme")[0]


def test_rows_are_read_once_while_nothing_changes(pair: tuple[VectorMemory, ...]) -> None:
    one, _ = pair
    one.searcher.config = dataclasses.replace(one.config, fetch_k=2)  # two candidates: the tenant read whole anyway
    now = time.time()
    first = one.search(QA[0][0], 2, tenant="acme", now=now)
    reads = one.searcher.rows.reads
    assert reads == 1 and len(one.searcher.rows.held("acme")) == len(QA)
    # the rows held for their texts: no vector (the index holds them), where the store's own read has one
    held = [one.searcher.rows.row("acme", i) for i in one.searcher.rows.held("acme")]
    assert all(r is not None and r.vector.size == 0 for r in held)
    assert one.store.get_experiences(tenant="acme", ids=[first[0].id])[first[0].id].vector.size == one.embedder.dim
    again = one.search(QA[0][0], 2, tenant="acme", now=now)
    assert one.searcher.rows.reads == reads  # the stamp read alone
    assert [h.to_json() for h in again] == [h.to_json() for h in first]


def test_what_another_process_changes_is_seen_at_the_next_search(pair: tuple[VectorMemory, ...]) -> None:
    one, two = pair
    hit = top(one)
    assert hit.response == QA[0][1] and hit.utility == pytest.approx(one.store.get_experiences(
        tenant="acme", ids=[hit.id])[hit.id].utility)
    before = one.store.search_state(tenant="acme")

    for _ in range(3):  # utility, changed by the other process
        two.record_outcome([hit.id], False, tenant="acme")
    assert one.store.search_state(tenant="acme") == (before[0], before[1] + 3)  # one version per transaction
    fresh = two.store.get_experiences(tenant="acme", ids=[hit.id])[hit.id].utility
    assert fresh < hit.utility and top(one).utility == pytest.approx(fresh)

    version = two.store.add_adapter(tenant="acme", base_model="tiny", method="sft", seed=0, status="promoted",
                                    metrics={}, covered=[hit.id], path="nowhere")
    two.store.mark_consolidated(tenant="acme", experience_ids=[hit.id], version=version)
    assert top(one).id != hit.id  # consolidated, and this memory leaves those out of the prompt

    other = top(one, 1)
    two.forget(id=other.id, tenant="acme")
    assert all(h.id != other.id for h in one.search(QA[1][0], 5, tenant="acme"))


def test_another_process_changes_are_read_again_and_the_rest_is_kept(pair: tuple[VectorMemory, ...]) -> None:
    one, two = pair
    hit, other = top(one, 0), top(one, 1)
    held = one.searcher.rows
    kept = held.row("acme", other.id)
    two.record_outcome([hit.id], False, tenant="acme")
    reads = one.searcher.rows.reads
    assert top(one, 0).utility < hit.utility  # the changed row, read again (one statement for it)
    assert one.searcher.rows.reads == reads + 1 and held.row("acme", other.id) is kept  # the others held as they were

    gone = top(one, 2)
    two.forget(id=gone.id, tenant="acme")  # its id logged under a version too: its held text goes
    assert all(h.id != gone.id for h in one.search(QA[2][0], 5, tenant="acme"))
    assert gone.id not in one.searcher.rows.held("acme") and held.row("acme", other.id) is kept


def test_a_log_that_no_longer_reaches_back_drops_the_rows_whole(pair: tuple[VectorMemory, ...]) -> None:
    one, two = pair
    hit = top(one)
    kept = one.searcher.rows.row("acme", top(one, 1).id)
    for _ in range(3):
        two.record_outcome([hit.id], False, tenant="acme")
    assert two.store.truncate_changes(tenant="acme", keep=1) == 2  # versions 1 and 2 of the three go
    fresh = two.store.get_experiences(tenant="acme", ids=[hit.id])[hit.id].utility
    assert top(one).utility == pytest.approx(fresh)
    assert one.searcher.rows.row("acme", top(one, 1).id) is not kept  # every row read afresh


@pytest.mark.postgres
def test_the_process_reads_leave_no_transaction_open(tmp_path: Path, embedder: Embedder, pg_db: Any) -> None:
    from sqlalchemy import create_engine, text

    with VectorMemory(tmp_path / "m", embedder=embedder, db_url=str(pg_db)) as vm:
        vm.ingest([rec(i) for i in range(len(QA))])
        assert vm.search(QA[0][0], 2, tenant="acme")
        watcher = create_engine(str(pg_db))
        try:
            with watcher.connect() as c:
                stuck = c.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                       "AND state LIKE 'idle in transaction%'")).scalar_one()
        finally:
            watcher.dispose()
    assert stuck == 0  # the process's own connection reads in autocommit: nothing holds a snapshot open


def test_forgetting_drops_the_held_text_at_once(pair: tuple[VectorMemory, ...]) -> None:
    one, _ = pair
    hit = top(one, 2)
    assert hit.id in one.searcher.rows.held("acme")
    one.forget(id=hit.id, tenant="acme")
    assert one.searcher.rows.held("acme") == []
    assert all(h.id != hit.id for h in one.search(QA[2][0], 5, tenant="acme"))


def test_held_rows_stay_within_their_limit_and_answer_the_same(tmp_path: Path, embedder: Embedder) -> None:
    def searched(limit: int, home: str) -> tuple[list[list[int]], VectorMemory]:
        config = MemoryConfig(min_sim=-1.0, fetch_k=4, held_rows=limit)
        vm = VectorMemory(tmp_path / home, embedder=embedder, config=config)
        vm.ingest([rec(i) for i in range(len(QA))] + [rec(i, tenant="globex") for i in range(3)])
        ids = [[h.id for h in vm.search(q, 2, tenant=t)] for q, _ in QA for t in ("acme", "globex")]
        return ids, vm

    capped, small = searched(3, "small")
    plain, none = searched(0, "none")
    whole, held = searched(100, "whole")
    try:
        assert capped == plain == whole
        assert sorted(held.searcher.rows.held("acme")) == sorted(held.store.all_experiences(tenant="acme"))
        assert sum(len(small.searcher.rows.held(t)) for t in ("acme", "globex")) <= 3
        # no row held: every search reads its picks' rows, after each tenant's columns were read once
        assert none.searcher.rows.held("acme") == [] and none.searcher.rows.reads == len(QA) * 2 + 2
    finally:
        small.close()
        none.close()
        held.close()


def test_a_broken_process_connection_is_replaced_and_no_read_is_lost(pair: tuple[VectorMemory, ...]) -> None:
    one, two = pair
    before = top(one)
    own = one.store._own
    broken = own._conn
    broken.close()  # as a server restart leaves it: every use raises
    two.record_outcome([before.id], False, tenant="acme")
    assert top(one).utility < before.utility  # the failed read asked again of the pool, none lost
    assert own._conn is not None and own._conn is not broken  # the broken one dropped, a new one of its own since


def _row(i: int, *, alpha: float = 1.0, consolidated: str | None = None) -> ExperienceData:
    vector = np.random.default_rng(i).standard_normal(8).astype(np.float32)
    return ExperienceData(i, "acme", None, None, f"t{i}", f"r{i}", None, None, vector / np.linalg.norm(vector), alpha,
                          1.0, 1, 0, 0.0, 1000.0 * i, consolidated)


def _reference(rows: dict[int, ExperienceData], answers: np.ndarray, cos: np.ndarray, consolidated: bool,
               now: float, config: MemoryConfig, k: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The picks from row objects, step by step: the usable answers, `combined_score`, then `mmr_select`."""
    usable = [j for j, a in enumerate(answers.tolist())
              if a >= 0 and a in rows and (consolidated or rows[a].consolidated_in is None)]
    found = [rows[int(answers[j])] for j in usable]
    age = np.array([(now - r.last_seen_at) / kernels.DAY for r in found], dtype=np.float32)
    scores = kernels.combined_score(cos[usable].astype(np.float32), np.array([r.utility for r in found], np.float32),
                                    age, config.w_sim, config.w_util, config.w_rec, config.half_life_days,
                                    config.min_sim)
    vectors = np.stack([r.vector for r in found]) if found else np.empty((0, 8), np.float32)
    picked = kernels.mmr_select(scores, vectors, k, config.mmr_lambda)
    return [found[j].id for j in picked.tolist()], scores[picked], age[picked]


@pytest.mark.parametrize("consolidated", [False, True])
def test_a_tenants_columns_pick_what_its_rows_pick(consolidated: bool) -> None:
    """`Columns` (one kernel over arrays, the candidates' vectors given) picks what the rows themselves pick, through
    puts (a changed row, new rows above and below the highest id) and drops."""
    rows = {i: _row(i, consolidated="v1" if i % 5 == 0 else None) for i in range(1, 40, 2)}
    held = Columns(ScoringColumns.of(rows.values()))
    config = MemoryConfig(min_sim=-1.0, retrieve_consolidated=consolidated)
    rng = np.random.default_rng(0)
    vector = {i: _row(i).vector for i in range(80)}  # what an index holds of every id

    def same() -> None:
        assert held.held() == sorted(rows) and held.live == len(rows)
        picks = 0
        for _ in range(20):
            answers = rng.choice(np.arange(-1, 80), size=12, replace=False).astype(np.int64)
            cos = rng.uniform(-1, 1, size=12).astype(np.float32)
            keys = np.unique(np.concatenate([answers[answers >= 0], rng.choice(80, size=5)]))  # and a few others
            table = (keys, np.stack([vector[a] for a in keys.tolist()]))
            ids, _, age, scores, missing = held.pick(answers, cos, table, consolidated, 50_000.0,
                                                     scoring_params(config), 4)
            want_ids, want_scores, want_age = _reference(rows, answers, cos, consolidated, 50_000.0, config, 4)
            assert ids.tolist() == want_ids
            picks += len(want_ids)
            assert np.array_equal(scores, want_scores) and np.array_equal(age, want_age)
            in_arrays = set(held.ids[:held.n].tolist())  # those held, and the gone ones not yet built out
            assert missing == sum(1 for a in answers.tolist() if a >= 0 and a not in in_arrays)
        assert picks >= 20  # most draws pick something

    same()
    rows[3] = _row(3, alpha=9.0)  # changed
    rows.update({i: _row(i) for i in range(41, 80, 2)})  # new, above the highest: the arrays grow
    held.put(ScoringColumns.of([rows[3]] + [rows[i] for i in range(41, 80, 2)]))
    same()
    held.drop([5, 7, 1000])  # forgotten (and one never held)
    del rows[5], rows[7]
    same()
    rows[4] = _row(4)  # below the highest: the arrays built again
    held.put(ScoringColumns.of([rows[4]]))
    same()


def test_many_changes_read_a_whole_tenant_again_whole(pair: tuple[VectorMemory, ...],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = pair
    hit = top(one)
    kept = one.searcher.rows.row("acme", top(one, 1).id)
    monkeypatch.setattr("logmem.memory.held.REREAD_MAX", 0)  # one change is already too many to read by id
    two.record_outcome([hit.id], False, tenant="acme")
    reads = one.searcher.rows.reads
    assert top(one).utility < hit.utility
    assert one.searcher.rows.reads == reads + 1  # one statement, for the whole tenant
    assert one.searcher.rows.row("acme", top(one, 1).id) is not kept
    assert sorted(one.searcher.rows.held("acme")) == sorted(one.store.all_experiences(tenant="acme"))


@pytest.mark.parametrize("mapped", [True, False])
def test_a_held_stamp_moves_with_another_connections_commit(tmp_path: Path, embedder: Embedder, mapped: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Under SQLite the stamp is held while no other connection commits: seen through the wal-index header mapped
    from the `-shm` file, or through `PRAGMA data_version` where it cannot be mapped."""
    if not mapped:
        monkeypatch.setattr("logmem.memory.store.engine._wal_index", lambda conn: None)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with VectorMemory(tmp_path / "one", embedder=embedder, db_url=url) as one, \
            VectorMemory(tmp_path / "two", embedder=embedder, db_url=url) as two:
        two.ingest([rec(i) for i in range(3)])
        first = one.store.search_state(tenant="acme")
        assert (one.store._own._shm is not None) == mapped
        assert one.store.search_state(tenant="acme") == first  # held: nothing committed since
        for i in range(3, 6):
            two.ingest([rec(i)])  # one commit of another connection at a time
            now = one.store.search_state(tenant="acme")
            assert now != first and now == two.store.search_state(tenant="acme")
            first = now
