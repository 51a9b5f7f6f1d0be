"""VectorMemory on a real PostgreSQL server: the same behaviour as on SQLite, plus several processes
sharing one database (each process's index follows SQL through the generation counter)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from logmem.memory import MemoryConfig, VectorMemory
from logmem.memory.ingest import AHEAD_BATCHES
from logmem.memory.store import Store
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

pytestmark = pytest.mark.postgres

T0 = 1_700_000_000.0
REVERSE_Q = "How do I reverse a list in Python?"
REVERSE_A = "Use my_list[::-1] for a reversed copy, or my_list.reverse() to reverse it in place."
FRANCE_Q = "What is the capital of France?"
GLOBEX_FRANCE_A = "The capital of France is Paris."
KB_Q = "How many bytes are in a kilobyte?"
KB_WRONG = "A kilobyte is 1000 bytes."
KB_FIX = "No, in binary it should be 1024 bytes."
KB_RIGHT = "You're right: in binary units a kilobyte (a kibibyte) is 1024 bytes."


def chat(id: str, tenant: str, user: str, *turns: str, like: int | None = None, dislike: int | None = None,
         at: float = 0.0) -> dict[str, Any]:
    """A native log record; `turns` alternate user and assistant, feedback names a message index."""
    feedback = [{"turn": t, "kind": k} for t, k in ((like, "like"), (dislike, "dislike")) if t is not None]
    messages = [{"role": "assistant" if i % 2 else "user", "content": c} for i, c in enumerate(turns)]
    return {"id": id, "tenant": tenant, "user": user, "timestamp": T0 + at, "feedback": feedback,
            "messages": messages}


# acme: two liked Q&As, an exact duplicate of the first from another user, a correction, a disliked answer.
# globex: the same France question answered differently (tenant isolation) and one more Q&A.
LOGS = [
    chat("a1", "acme", "alice", REVERSE_Q, REVERSE_A, like=1, at=1),
    chat("a2", "acme", "bob", FRANCE_Q, "Paris.", like=1, at=2),
    chat("a3", "acme", "bob", REVERSE_Q, REVERSE_A, like=1, at=3),
    chat("a4", "acme", "carol", KB_Q, KB_WRONG, KB_FIX, KB_RIGHT, like=3, at=4),
    chat("a5", "acme", "dave", "Write a haiku about green tea.", "Tea is a drink.", dislike=1, at=5),
    chat("g1", "globex", "alice", FRANCE_Q, GLOBEX_FRANCE_A, like=1, at=6),
    chat("g2", "globex", "erin", "How do I sort a dictionary by value in Python?",
         "sorted(d.items(), key=lambda kv: kv[1]) gives the pairs ordered by value.", like=1, at=7),
]


@pytest.fixture
def sql(pg_db: str) -> Iterator[Engine]:
    """A separate engine on the test database, to check rows behind the memory's back."""
    engine = create_engine(pg_db)
    yield engine
    engine.dispose()


@pytest.fixture
def memory(tmp_path: Path, embedder: Any, pg_db: str) -> Iterator[VectorMemory]:
    with VectorMemory(tmp_path / "home", embedder=embedder, db_url=pg_db) as vm:
        yield vm


@pytest.fixture
def loaded(memory: VectorMemory) -> VectorMemory:
    memory.ingest(LOGS)
    return memory


def count(sql: Engine, query: str, **params: Any) -> int:
    with sql.connect() as conn:
        return int(conn.execute(text(query), params).scalar_one())


def rows(sql: Engine, table: str, tenant: str | None = None) -> int:
    where = " WHERE tenant = :tenant" if tenant is not None else ""
    return count(sql, f"SELECT count(*) FROM {table}{where}", tenant=tenant)


def generation(sql: Engine, tenant: str) -> int:
    return count(sql, "SELECT generation FROM index_state WHERE tenant = :tenant", tenant=tenant)


def responses(vm: VectorMemory, query: str, tenant: str) -> list[str]:
    return [h.response for h in vm.search(query, k=5, tenant=tenant)]


def test_ingest_writes_rows_and_experiences(memory: VectorMemory, sql: Engine) -> None:
    report = memory.ingest(LOGS)

    assert (report.read, report.stored, report.skipped, report.rejected) == (7, 7, 0, 0)
    assert (report.experiences, report.merged, report.filtered) == (5, 1, 1)
    assert rows(sql, "interactions", "acme") == 5 and rows(sql, "interactions", "globex") == 2
    assert rows(sql, "experiences", "acme") == 3 and rows(sql, "experiences", "globex") == 2
    assert rows(sql, "feedback") == 7
    assert count(sql, "SELECT support FROM experiences WHERE response = :r", r=REVERSE_A) == 2
    assert rows(sql, "experience_sources") == 6  # five experiences, one merged duplicate
    assert count(sql, "SELECT count(*) FROM interactions WHERE status = 'filtered'") == 1
    ids, xb = memory.store.vectors(tenant="acme", d=memory.d)  # bytea round trip
    assert xb.shape == (3, memory.d) and len(set(ids.tolist())) == 3
    assert np.allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-5)


def test_reingest_changes_nothing(loaded: VectorMemory, sql: Engine) -> None:
    before = generation(sql, "acme")

    report = loaded.ingest(LOGS)

    assert (report.stored, report.skipped, report.experiences, report.merged) == (0, 7, 0, 0)
    assert rows(sql, "interactions") == 7 and rows(sql, "experiences") == 5 and rows(sql, "feedback") == 7
    assert generation(sql, "acme") == before


def test_search_returns_the_right_experience(loaded: VectorMemory) -> None:
    hit = loaded.search("how can I reverse a python list", k=3, tenant="acme")[0]
    assert (hit.response, hit.support, hit.tenant) == (REVERSE_A, 2, "acme")

    hit = loaded.search("how many bytes make one kilobyte", k=3, tenant="acme")[0]
    assert hit.response == KB_RIGHT
    assert hit.rejected == KB_WRONG
    assert hit.lesson is not None and "1024" in hit.lesson

    assert "Tea is a drink." not in responses(loaded, "a haiku about green tea", "acme")


def test_tenants_are_isolated(loaded: VectorMemory) -> None:
    assert responses(loaded, "capital of France", "acme")[0] == "Paris."
    assert responses(loaded, "capital of France", "globex")[0] == GLOBEX_FRANCE_A
    for tenant in ("acme", "globex"):
        hits = loaded.search("sort a python dictionary by its values", k=5, tenant=tenant)
        assert {h.tenant for h in hits} <= {tenant}
    assert not any(r.startswith("sorted(") for r in responses(loaded, "sort a dict by value", "acme"))
    assert loaded.search("capital of France", tenant="initech") == []


def test_forget_user_removes_their_rows_and_vectors(loaded: VectorMemory, sql: Engine) -> None:
    counts = loaded.forget(user="bob")

    assert counts == {"experiences": 1, "interactions": 2}
    assert count(sql, 'SELECT count(*) FROM interactions WHERE "user" = :u', u="bob") == 0
    assert rows(sql, "feedback") == 5  # bob's two likes went with his interactions (ON DELETE CASCADE)
    assert count(sql, "SELECT count(*) FROM experiences WHERE response = 'Paris.'") == 0
    # alice's answer stays (the text was hers) but loses bob's support
    assert count(sql, "SELECT support FROM experiences WHERE response = :r", r=REVERSE_A) == 1
    assert rows(sql, "experience_sources") == 4
    assert loaded.stats("acme").index["acme"]["size"] == 2
    assert "Paris." not in responses(loaded, "capital of France", "acme")
    assert responses(loaded, "capital of France", "globex")[0] == GLOBEX_FRANCE_A


def test_forget_user_in_one_tenant_keeps_the_other(loaded: VectorMemory, sql: Engine) -> None:
    counts = loaded.forget(user="alice", tenant="globex")

    assert counts == {"experiences": 1, "interactions": 1}
    assert count(sql, 'SELECT count(*) FROM interactions WHERE "user" = :u', u="alice") == 1
    assert loaded.stats("globex").index["globex"]["size"] == 1
    assert responses(loaded, "how can I reverse a python list", "acme")[0] == REVERSE_A


def test_forget_tenant_removes_all_its_rows(loaded: VectorMemory, sql: Engine) -> None:
    for tenant in ("acme", "globex"):  # what a consolidation job measured (figures computed from its data)
        loaded.store.record_serving_mode(tenant=tenant, mode="vote", adapter=None, metric="accuracy",
                                         figures={"vote": 0.9, "memory": 0.7}, reason="measured")
    loaded.store.pin_serving_mode(tenant="globex", mode="memory")
    counts = loaded.forget(tenant="globex")

    assert counts == {"experiences": 2, "interactions": 2}
    for table in ("interactions", "experiences", "instructions", "serving_modes"):
        assert rows(sql, table, "globex") == 0
    assert rows(sql, "serving_modes", "acme") == 1
    assert rows(sql, "feedback") == 5
    assert loaded.search("capital of France", tenant="globex") == []
    assert loaded.stats("globex").index["globex"]["size"] == 0
    assert rows(sql, "experiences", "acme") == 3


def test_record_outcome_updates_utility(loaded: VectorMemory, sql: Engine) -> None:
    hit = loaded.search("capital of France", tenant="acme")[0]
    assert hit.utility == pytest.approx(2 / 3)  # Beta(1, 1) prior plus one liked answer

    assert loaded.record_outcome([hit.id], True, tenant="acme") == 1
    assert loaded.record_outcome([hit.id], 1.0, tenant="globex") == 0  # another tenant's id changes nothing
    assert loaded.record_outcome([hit.id], 0.25, tenant="acme") == 1

    with sql.connect() as conn:
        alpha, beta = conn.execute(text("SELECT alpha, beta FROM experiences WHERE id = :id"),
                                   {"id": hit.id}).one()
    assert (alpha, beta) == pytest.approx((2 + 1.25, 1 + 0.75))
    after = loaded.search("capital of France", tenant="acme")[0]
    assert (after.id, after.utility) == (hit.id, pytest.approx(3.25 / 5))


def test_stats(loaded: VectorMemory) -> None:
    stats = loaded.stats()
    assert (stats.interactions, stats.experiences, stats.merged, stats.filtered) == (7, 5, 1, 1)
    assert stats.lessons == 1
    assert {t: ix["size"] for t, ix in stats.index.items()} == {"acme": 3, "globex": 2}

    acme = loaded.stats("acme")
    assert (acme.interactions, acme.experiences, acme.filtered) == (5, 3, 1)
    assert 0.5 < acme.utility["mean"] < 1.0


def test_two_processes_share_one_database(tmp_path: Path, embedder: Any, pg_db: str) -> None:
    with VectorMemory(tmp_path / "one", embedder=embedder, db_url=pg_db) as one, \
            VectorMemory(tmp_path / "two", embedder=embedder, db_url=pg_db) as two:
        assert two.search(REVERSE_Q, tenant="acme") == []  # two has loaded an empty index

        one.ingest(LOGS[:2])
        assert responses(two, "how can I reverse a python list", "acme")[0] == REVERSE_A

        two.ingest(LOGS[3:4])
        assert responses(one, "how many bytes make one kilobyte", "acme")[0] == KB_RIGHT
        assert responses(one, "how can I reverse a python list", "acme")[0] == REVERSE_A

        report = one.ingest(LOGS[2:3])  # a duplicate of what `one` ingested, now merged
        assert report.merged == 1
        assert two.search(REVERSE_Q, tenant="acme")[0].support == 2

        two.forget(user="bob")
        assert "Paris." not in responses(one, "capital of France", "acme")
        assert one.stats("acme").index["acme"]["size"] == two.stats("acme").index["acme"]["size"] == 2


class FailingEmbedder:
    """The real embedder, except that its `fail_on`-th call raises (a crash in the middle of an ingest)."""

    def __init__(self, inner: Any, fail_on: int) -> None:
        self.inner, self.fail_on, self.calls = inner, fail_on, 0
        self.dim, self.name = inner.dim, inner.name

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("embedder crashed")
        return self.inner.encode(texts)


def test_failed_batch_leaves_no_partial_rows(tmp_path: Path, embedder: Any, pg_db: str, sql: Engine) -> None:
    # the last two requests share an instruction paragraph: none of its tally is written
    shared = "You answer questions about geography.\n\n"
    places = [("Where is Lima?", "Lima is in Peru."), ("Where is Oslo?", "Oslo is in Norway.")]
    logs = LOGS[:2] + [chat(f"b{i}", "acme", "frank", shared + q, a, like=1, at=10 + i)
                       for i, (q, a) in enumerate(places)]
    # one transaction per record; the requests embedded a window at a time ahead of them (AHEAD_BATCHES): the
    # first window is the first two records, the second window's embedding crashes
    config = MemoryConfig(batch_size=1)
    assert AHEAD_BATCHES // 2 == 2
    with VectorMemory(tmp_path / "home", embedder=FailingEmbedder(embedder, 2), db_url=pg_db,
                      config=config) as vm:
        with pytest.raises(RuntimeError, match="embedder crashed"):
            vm.ingest(logs)

        assert rows(sql, "interactions") == 2  # the first window committed, the second left nothing
        assert count(sql, 'SELECT count(*) FROM interactions WHERE "user" = :u', u="frank") == 0
        assert rows(sql, "experiences") == 2 and rows(sql, "feedback") == 2
        assert rows(sql, "instructions") == 0
        assert generation(sql, "acme") == 2
        assert vm.stats("acme").index["acme"]["size"] == 2

        report = vm.ingest(logs)  # the embedder works again: only the lost batch is new
        assert (report.skipped, report.stored, report.experiences) == (2, 2, 2)
        assert rows(sql, "instructions") == 1
        assert responses(vm, "Where is Oslo?", "acme")[0] == "Oslo is in Norway."


def test_store_transaction_rolls_back(memory: VectorMemory, sql: Engine) -> None:
    record = {"id": "x1", "tenant": "acme", "user": "zoe", "feedback": [{"turn": 1, "kind": "like"}]}
    with pytest.raises(RuntimeError, match="boom"), memory.store.transaction() as tx:
        memory.store.add_interaction(tx, record=record, status="filtered")
        memory.store.bump_generation(tx, tenant="acme")
        tx.flush()
        assert rows(sql, "interactions") == 0  # not visible to others before commit
        raise RuntimeError("boom")
    assert rows(sql, "interactions") == 0 and rows(sql, "feedback") == 0 and rows(sql, "index_state") == 0


# --- two writers at once ------------------------------------------------------------------------
Write = Callable[[Store, Session, dict[str, int]], None]


def _bump(store: Store, tx: Session, ids: dict[str, int]) -> None:
    store.bump_generation(tx, tenant="acme")


def _merge(store: Store, tx: Session, ids: dict[str, int]) -> None:
    store.merge_into(tx, experience_id=ids["experience"], interaction_id=ids["interaction"], timestamp=T0,
                     success=1.0)


def _seed(store: Store) -> dict[str, int]:
    """A tenant at generation 1 with an experience (support 1) and two more interactions to merge."""
    with store.transaction() as tx:
        store.bump_generation(tx, tenant="acme")
        first, *spare = (store.add_interaction(tx, record={"id": f"i{i}", "tenant": "acme"}, status="merged")
                         for i in range(3))
        experience = store.add_experience(
            tx, tenant="acme", user=None, content_hash="h", instruction=None, trigger="q", response="a",
            lesson=None, rejected=None, vector=np.full(4, 0.5, dtype=np.float32), alpha=2.0, beta=1.0,
            timestamp=T0, interaction_id=first)
    return {"experience": experience, "interaction": spare[0], "spare": spare[1]}


def _bump_new_tenant(store: Store, tx: Session, ids: dict[str, int]) -> None:
    store.bump_generation(tx, tenant="newco")


def _tally_new_instruction(store: Store, tx: Session, ids: dict[str, int]) -> None:
    store.count_instructions(tx, tenant="newco", counts={"h1": ("Classify the question.", 1)})


@pytest.mark.parametrize(("write", "query", "want"), [
    (_bump, "SELECT generation FROM index_state WHERE tenant = 'acme'", 3),
    (_merge, "SELECT support FROM experiences", 3),
    (_bump_new_tenant, "SELECT generation FROM index_state WHERE tenant = 'newco'", 2),
    (_tally_new_instruction, "SELECT count FROM instructions WHERE tenant = 'newco'", 2),
], ids=["generation", "support", "first-generation", "first-instruction"])
def test_concurrent_increments_are_not_lost(pg_db: str, sql: Engine, write: Write, query: str, want: int) -> None:
    """Two processes' transactions increment one row: both count. (Under read committed a plain
    read-then-write would overwrite the first increment with a value computed from a stale read; and when
    the row does not exist yet, both would insert it and the second would fail on the unique key.)"""
    store = Store(pg_db)
    ids = _seed(store)
    other_ids = {**ids, "interaction": ids["spare"]}

    def other_process() -> None:
        with store.transaction() as tx:
            write(store, tx, other_ids)

    other = threading.Thread(target=other_process)
    try:
        with store.transaction() as tx:
            write(store, tx, ids)
            tx.flush()
            other.start()
            _wait_for_a_lock_waiter(sql)  # the other writer is inside its transaction, blocked on our row
        other.join(timeout=60)
        assert not other.is_alive()
        assert count(sql, query) == want
    finally:
        store.close()


def _wait_for_a_lock_waiter(sql: Engine, timeout: float = 60.0) -> None:
    query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
             "AND wait_event_type = 'Lock'")
    deadline = time.monotonic() + timeout
    while count(sql, query) == 0:
        assert time.monotonic() < deadline, "the other writer never waited for the first one's row lock"
        time.sleep(0.05)
