"""Processes that share one database follow each other by the change log, never by a rebuild: what one
ingests or forgets, the other's next search sees, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from liked import QA, T0, rec
from logmem.memory import Embedder, MemoryConfig, VectorMemory
from logmem.memory.store import Store
from sqlalchemy import create_engine, text


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One database two processes share: a SQLite file, or a fresh database on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("pg_db"))


@pytest.fixture
def pair(tmp_path: Path, embedder: Embedder, db_url: str) -> Iterator[tuple[VectorMemory, VectorMemory]]:
    """Two memories with their own homes (two processes, or two hosts) on one database."""
    with VectorMemory(tmp_path / "one", embedder=embedder, db_url=db_url) as one, \
            VectorMemory(tmp_path / "two", embedder=embedder, db_url=db_url) as two:
        yield one, two


def in_sql(vm: VectorMemory, tenant: str) -> list[int]:
    return sorted(vm.store.vectors(tenant=tenant, d=vm.d)[0].tolist())


def in_index(vm: VectorMemory, tenant: str) -> list[int]:
    """Every id the process's index holds for the tenant (duplicates included)."""
    index = vm.indexes.get(tenant)
    if len(index) == 0:
        return []
    _, I = index.search(np.ones(vm.d, dtype=np.float32) / np.sqrt(vm.d), len(index) + 5)
    return sorted(int(i) for i in I[0] if i >= 0)


def answers(vm: VectorMemory, i: int, tenant: str = "acme") -> list[str]:
    return [h.response for h in vm.search(QA[i][0], 3, tenant=tenant)]


def test_each_sees_what_the_other_ingests_and_forgets_without_a_rebuild(
        pair: tuple[VectorMemory, VectorMemory]) -> None:
    one, two = pair
    for vm in pair:  # each loads both tenants, still empty (a first build: no file yet)
        assert vm.search(QA[0][0], tenant="acme") == vm.search(QA[0][0], tenant="globex") == []
    rebuilds = (one.indexes.rebuilds, two.indexes.rebuilds)

    one.ingest([rec(0)])
    assert answers(two, 0)[0] == QA[0][1]
    one.ingest([rec(1), rec(2, user="bob")])
    assert answers(two, 1)[0] == QA[1][1] and answers(two, 2)[0] == QA[2][1]
    two.ingest([rec(3), rec(4, user="bob"), rec(5, tenant="globex")])
    assert answers(one, 3)[0] == QA[3][1] and answers(one, 4)[0] == QA[4][1]
    assert answers(one, 5, tenant="globex")[0] == QA[5][1]
    assert QA[5][1] not in answers(one, 5)  # tenants stay apart

    counts = one.forget(user="bob")
    assert counts["experiences"] == 2
    assert QA[2][1] not in answers(two, 2) and QA[4][1] not in answers(two, 4)
    victim = two.search(QA[0][0], 1, tenant="acme")[0].id
    two.forget(id=victim)
    assert QA[0][1] not in answers(one, 0)

    assert one.indexes.follows >= 3 and two.indexes.follows >= 4
    assert (one.indexes.rebuilds, two.indexes.rebuilds) == rebuilds
    for vm in (one, two):
        assert in_index(vm, "acme") == in_sql(vm, "acme") and len(in_sql(vm, "acme")) == 2
        assert in_index(vm, "globex") == in_sql(vm, "globex")


def test_both_writing_at_once_lose_and_double_nothing(pair: tuple[VectorMemory, VectorMemory]) -> None:
    one, two = pair
    one.ingest([rec(0)])
    two.search(QA[0][0], tenant="acme")
    rebuilds = (one.indexes.rebuilds, two.indexes.rebuilds)
    errors: list[BaseException] = []

    def write(vm: VectorMemory, ids: range) -> None:
        try:
            for i in ids:  # one transaction each: the two writers interleave
                vm.ingest([rec(i)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(one, range(1, 5))),
               threading.Thread(target=write, args=(two, range(5, 8)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)

    assert not errors
    assert len(in_sql(one, "acme")) == len(QA)
    for vm in (one, two):
        assert in_index(vm, "acme") == in_sql(vm, "acme")  # each id once, none missing
        assert [answers(vm, i)[0] for i in range(len(QA))] == [a for _, a in QA]
    assert (one.indexes.rebuilds, two.indexes.rebuilds) == rebuilds


CHILD = """
import sys
from logmem.memory import VectorMemory
from logmem.model.embedding import default_embedder

home, url = sys.argv[1], sys.argv[2]
q, a = "How do I list hidden files with ls?", "ls -a shows hidden files too."
record = {"id": "child", "tenant": "acme", "user": "kid", "timestamp": 1.0,
          "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
          "feedback": [{"turn": 1, "kind": "like"}]}
with VectorMemory(home, embedder=default_embedder(), db_url=url) as memory:
    memory.ingest([record])
    memory.forget(user="u1")
"""


def test_a_real_second_process_is_followed(tmp_path: Path, embedder: Embedder, db_url: str) -> None:
    with VectorMemory(tmp_path / "parent", embedder=embedder, db_url=db_url) as parent:
        parent.ingest([rec(0), rec(1)])
        assert answers(parent, 1)[0] == QA[1][1]
        rebuilds = parent.indexes.rebuilds

        subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "child"), db_url], check=True, timeout=600,
                       capture_output=True)

        hit = parent.search("show hidden files with ls", 1, tenant="acme")[0]
        assert hit.response == "ls -a shows hidden files too."
        assert QA[1][1] not in answers(parent, 1)  # the child forgot u1's experience
        assert parent.indexes.rebuilds == rebuilds
        assert in_index(parent, "acme") == in_sql(parent, "acme")


def test_an_older_file_is_brought_forward_by_the_log(tmp_path: Path, embedder: Embedder) -> None:
    home = tmp_path / "home"
    with VectorMemory(home, embedder=embedder) as vm:
        vm.ingest([rec(0), rec(1)])
    shutil.copytree(home / "index", tmp_path / "old")
    with VectorMemory(home, embedder=embedder) as vm:
        vm.ingest([rec(2)])
        vm.forget(user="u0")
    shutil.rmtree(home / "index")
    shutil.copytree(tmp_path / "old", home / "index")  # the file from before the ingest and the forget

    with VectorMemory(home, embedder=embedder) as vm:
        assert answers(vm, 2)[0] == QA[2][1] and QA[0][1] not in answers(vm, 0)
        assert (vm.indexes.rebuilds, vm.indexes.follows) == (0, 1)
        assert in_index(vm, "acme") == in_sql(vm, "acme")


def test_a_process_behind_a_truncated_log_rebuilds(pair: tuple[VectorMemory, VectorMemory], tmp_path: Path,
                                                   embedder: Embedder, db_url: str) -> None:
    _, two = pair
    config = MemoryConfig(change_log_generations=1)
    with VectorMemory(tmp_path / "three", embedder=embedder, db_url=db_url, config=config) as three:
        three.ingest([rec(0)])
        assert answers(two, 0)[0] == QA[0][1]
        rebuilds = two.indexes.rebuilds
        three.ingest([rec(1)])
        three.ingest([rec(2)])
        three.save()  # writing the file trims the log to the last generation

        assert answers(two, 1)[0] == QA[1][1] and answers(two, 2)[0] == QA[2][1]
        assert two.indexes.rebuilds == rebuilds + 1
        assert in_index(two, "acme") == in_sql(two, "acme")


def test_forgetting_a_tenant_leaves_an_empty_index_everywhere(pair: tuple[VectorMemory, VectorMemory]) -> None:
    one, two = pair
    one.ingest([rec(0), rec(1)])
    assert answers(two, 0)[0] == QA[0][1]

    two.forget(tenant="acme")

    assert one.search(QA[0][0], tenant="acme") == [] and len(one.indexes.get("acme")) == 0
    one.ingest([rec(2)])  # the tenant starts again, and is followed again
    assert [answers(vm, 2)[0] for vm in (one, two)] == [QA[2][1]] * 2
    assert in_index(two, "acme") == in_sql(two, "acme")


# --- the log itself -----------------------------------------------------------------------------
def _experience(store: Store, tx: Any, n: int) -> int:
    pk = store.add_interaction(tx, record={"id": f"i{n}", "tenant": "acme"}, status="experience")
    return store.add_experience(tx, tenant="acme", user=None, content_hash=f"h{n}", instruction=None,
                                trigger=f"q{n}", response="a", lesson=None, rejected=None,
                                vector=np.full(4, 0.5, dtype=np.float32), alpha=1.0, beta=1.0, timestamp=T0,
                                interaction_id=pk)


def test_the_delta_follows_the_order_of_changes_even_when_an_id_comes_back(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'log.db'}")
    try:
        with store.transaction() as tx:
            a, b = _experience(store, tx, 0), _experience(store, tx, 1)
            store.bump_generation(tx, tenant="acme", added=[a, b])  # generation 1
        store.forget(experience_id=b)  # 2: b removed; SQLite hands the highest id out again
        with store.transaction() as tx:
            c = _experience(store, tx, 2)
            store.bump_generation(tx, tenant="acme", added=[c])  # 3
        assert c == b

        from_start, from_one, from_two = (store.changes(tenant="acme", after=g, d=4) for g in (0, 1, 2))

        assert from_start is not None and from_one is not None and from_two is not None
        assert (from_start.generation, from_start.removed.tolist(), from_start.ids.tolist()) == (3, [], [a, c])
        assert (from_one.removed.tolist(), from_one.ids.tolist()) == ([b], [c])  # the old b out, the new one in
        assert (from_two.removed.tolist(), from_two.ids.tolist()) == ([], [c])
        assert from_one.xb.shape == (1, 4) and from_one.xb.dtype == np.float32
        assert store.changes(tenant="acme", after=4, d=4) is None  # a generation this database never had
        assert store.truncate_changes(tenant="acme", keep=1) == 3
        assert store.changes(tenant="acme", after=1, d=4) is None and store.changes(tenant="acme", after=2, d=4)
    finally:
        store.close()


def test_a_rolled_back_write_logs_nothing(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'log.db'}")
    try:
        with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
            store.bump_generation(tx, tenant="acme", added=[_experience(store, tx, 0)])
            raise RuntimeError("boom")
        engine = create_engine(store.url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM index_changes")).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM index_change_floors")).scalar_one() == 0
        engine.dispose()
        assert store.generation(tenant="acme") == 0
    finally:
        store.close()


def test_the_compact_kind_follows_saves_and_reopens_without_a_rebuild(tmp_path: Path, embedder: Embedder) -> None:
    config = MemoryConfig(index_kind="hnsw_sq8")
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with VectorMemory(tmp_path / "one", embedder=embedder, db_url=url, config=config) as one, \
            VectorMemory(tmp_path / "two", embedder=embedder, db_url=url, config=config) as two:
        one.ingest([rec(i) for i in range(4)])
        assert answers(two, 2)[0] == QA[2][1]
        two.ingest([rec(4), rec(5, user="bob")])
        one.forget(user="bob")
        assert answers(one, 4)[0] == QA[4][1] and QA[5][1] not in answers(two, 5)
        assert two.indexes.get("acme").kind == "hnsw_sq8" and in_index(two, "acme") == in_sql(two, "acme")
        before = answers(two, 0)
    with VectorMemory(tmp_path / "two", embedder=embedder, db_url=url, config=config) as again:
        assert answers(again, 0) == before and again.indexes.rebuilds == 0  # its file, brought forward by the log
        assert in_index(again, "acme") == in_sql(again, "acme")
