"""The rows a process's searches hold (`HeldRows`): read from SQL once while nothing changes, and never stale: what
another process (another memory on the same database) changes of an experience, its utility, its consolidation or its
existence, this one's next search sees; forgetting drops the held text at once. SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from liked import QA, rec
from logmem.memory import Embedder, MemoryConfig, VectorMemory


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
    first = one.search(QA[0][0], 3, tenant="acme")
    reads = one.searcher.rows.reads
    assert reads == 1 and len(one.searcher.rows.held("acme")) == len(QA)  # fetch_k > 6: every row at once
    again = one.search(QA[0][0], 3, tenant="acme")
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
    try:
        assert capped == plain
        assert sum(len(small.searcher.rows.held(t)) for t in ("acme", "globex")) <= 3
        assert none.searcher.rows.held("acme") == [] and none.searcher.rows.reads == len(QA) * 2
    finally:
        small.close()
        none.close()
