"""One memory shared by processes and hosts (issue 15's Done-when): what one home ingests, judges or forgets, another
home's next search sees; two real processes writing at once lose and double nothing. On SQLite, on a real
PostgreSQL, and on PostgreSQL with pgvector as the index (where `auto` with `shared_index` chooses it)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from logmem.memory import Embedder, MemoryConfig, VectorMemory
from logmem.memory.indexes import resolve_kind
from sqlalchemy import create_engine, text

T0 = 1_700_000_000.0
SUBJECTS = ["a Python list", "a git branch", "a Kubernetes pod", "a PostgreSQL table", "an nginx site", "a Rust crate",
            "a Docker image", "a Redis key", "a cron job", "an SSH key", "a Kafka topic", "a systemd unit"]
ASKS = ["How do I delete {}?", "How do I rename {}?", "How do I back up {}?", "How do I list every {}?"]


def qa(i: int) -> tuple[str, str]:
    subject, ask = SUBJECTS[i % len(SUBJECTS)], ASKS[i // len(SUBJECTS)]
    return ask.format(subject), f"Answer {i}: for {subject}, use the tool's own command number {i}."


def rec(i: int, *, tenant: str = "acme", user: str | None = None) -> dict[str, Any]:
    q, a = qa(i)
    return {"id": f"r{i}", "tenant": tenant, "user": user or f"u{i}", "timestamp": T0 + i,
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "feedback": [{"turn": 1, "kind": "like"}]}


PGVECTOR = MemoryConfig(index_kind="auto", shared_index=True)  # pgvector where the server has it


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("pgvector", marks=pytest.mark.postgres)])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, MemoryConfig]:
    """(database URL, config) two homes share: SQLite, PostgreSQL with faiss following, or pgvector."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}", MemoryConfig()
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_db")), MemoryConfig()
    return str(request.getfixturevalue("pgvector_db")), PGVECTOR


@pytest.fixture
def pair(tmp_path: Path, embedder: Embedder, shared: tuple[str, MemoryConfig]
         ) -> Iterator[tuple[VectorMemory, VectorMemory]]:
    url, config = shared
    with VectorMemory(tmp_path / "one", embedder=embedder, db_url=url, config=config) as one, \
            VectorMemory(tmp_path / "two", embedder=embedder, db_url=url, config=config) as two:
        yield one, two


def in_sql(vm: VectorMemory, tenant: str = "acme") -> list[int]:
    return sorted(vm.store.vectors(tenant=tenant, d=vm.d)[0].tolist())


def in_index(vm: VectorMemory, tenant: str = "acme") -> list[int]:
    index = vm.indexes.get(tenant)
    n = len(index)
    if n == 0:
        return []
    _, I = index.search(np.ones(vm.d, dtype=np.float32) / np.sqrt(vm.d), n + 5)
    return sorted(int(i) for i in I[0] if i >= 0)


def top(vm: VectorMemory, i: int, tenant: str = "acme") -> str | None:
    hits = vm.search(qa(i)[0], 1, tenant=tenant)
    return hits[0].response if hits else None


def test_feedback_in_one_home_reaches_the_next_search_of_the_other(pair: tuple[VectorMemory, VectorMemory]) -> None:
    one, two = pair
    one.ingest([rec(0), rec(1)])
    (hit,) = two.search(qa(0)[0], 1, tenant="acme")
    two.log_answer(tenant="acme", interaction_id="served-1", messages=[{"role": "user", "content": qa(0)[0]}],
                   answer=hit.response, hits=[hit])

    result = one.feedback("served-1", "dislike", tenant="acme")  # the user's rating reaches the other home

    assert result.credited == 1
    (again,) = two.search(qa(0)[0], 1, tenant="acme")
    assert again.id == hit.id and again.utility < hit.utility
    correction = "Answer: run the delete command with --force for a Python list."
    two.feedback("served-1", "correction", tenant="acme", text=correction)  # a correction teaches an experience
    assert correction in [h.response for h in one.search(qa(0)[0], 3, tenant="acme")]
    assert in_index(one) == in_sql(one) == in_index(two)


def test_a_forget_in_one_home_leaves_nothing_for_the_other(pair: tuple[VectorMemory, VectorMemory]) -> None:
    one, two = pair
    one.ingest([rec(0, user="bob"), rec(1), rec(2, user="bob")])
    assert top(two, 2) == qa(2)[1]

    assert two.forget(user="bob")["experiences"] == 2

    assert top(one, 0) != qa(0)[1] and top(one, 2) != qa(2)[1] and top(one, 1) == qa(1)[1]
    assert in_index(one) == in_sql(one) == in_index(two) and len(in_sql(one)) == 1


WRITER = """
import json, sys
from logmem.memory import MemoryConfig, VectorMemory
from logmem.model.embedding import default_embedder
sys.path.insert(0, {tests!r})
from test_sharing import rec

home, url, config, first, count = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
made = 0
with VectorMemory(home, embedder=default_embedder(), db_url=url, config=MemoryConfig(**config)) as memory:
    for i in range(first, first + count):  # one transaction each: the two writers interleave
        made += memory.ingest([rec(i, user="gone" if i % 4 == 0 else None)]).experiences
    memory.forget(user="gone")  # each forgets the records it was given for user "gone" (all of them, whoever wrote)
print(json.dumps({{"experiences": made}}))
"""


def test_two_processes_writing_at_once_lose_and_double_nothing(tmp_path: Path, embedder: Embedder,
                                                               shared: tuple[str, MemoryConfig]) -> None:
    url, config = shared
    script = WRITER.format(tests=str(Path(__file__).parent))
    options = json.dumps({"index_kind": config.index_kind, "shared_index": config.shared_index})
    with VectorMemory(tmp_path / "watcher", embedder=embedder, db_url=url, config=config) as watcher:
        watcher.ingest([rec(47)])
        assert top(watcher, 47) == qa(47)[1]
        rebuilds = watcher.indexes.rebuilds
        writers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"w{n}"), url, options, str(first),
                                     "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for n, first in enumerate((0, 20))]
        outs = [w.communicate(timeout=600) for w in writers]
        assert [w.returncode for w in writers] == [0, 0], [err[-2000:] for _, err in outs]
        made = sum(json.loads(out.strip().splitlines()[-1])["experiences"] for out, _ in outs)

        assert made == 40  # every record taught its own experience: none merged into another's
        kept = [i for i in range(40) if i % 4 != 0] + [47]
        assert len(in_sql(watcher)) == len(kept)  # none lost, none twice
        assert in_index(watcher) == in_sql(watcher)  # the watcher followed both, each id once
        assert [top(watcher, i) for i in kept] == [qa(i)[1] for i in kept]
        assert all(top(watcher, i) != qa(i)[1] for i in range(0, 40, 4))
        assert watcher.indexes.rebuilds == rebuilds  # by the log (or nothing to follow: pgvector)
        if watcher.indexes.durable:
            engine = create_engine(url)
            try:
                with engine.connect() as conn:
                    vectors = sorted(conn.execute(text("SELECT experience_id FROM experience_vectors")).scalars())
                    rows = sorted(conn.execute(text("SELECT id FROM experiences")).scalars())
            finally:
                engine.dispose()
            assert vectors == rows == in_sql(watcher)  # no vector of a forgotten experience left


@pytest.mark.postgres
def test_auto_with_shared_index_chooses_pgvector_where_the_server_has_it(tmp_path: Path, embedder: Embedder,
                                                                         pgvector_db: str) -> None:
    with VectorMemory(tmp_path / "home", embedder=embedder, db_url=pgvector_db, config=PGVECTOR) as vm:
        vm.ingest([rec(0)])
        assert vm.indexes.durable and vm.indexes.get("acme").kind == "pgvector"
    with VectorMemory(tmp_path / "plain", embedder=embedder, db_url=pgvector_db) as vm:
        assert not vm.indexes.durable and vm.indexes.get("acme").kind == "flat"  # not asked for: faiss as before


@pytest.mark.postgres
def test_auto_with_shared_index_stays_on_faiss_without_pgvector_0_8(caplog: pytest.LogCaptureFixture,
                                                                    pg_db: str) -> None:
    # the pg_db server is pgserver's PostgreSQL (pgvector 0.6.2, no iterative scan) or CI's Debian one (none)
    engine = create_engine(pg_db)
    try:
        with caplog.at_level(logging.WARNING, logger="logmem.memory.indexes"):
            assert resolve_kind(PGVECTOR, engine) == "auto"
    finally:
        engine.dispose()
    assert "shared_index: the PostgreSQL server" in caplog.text and "follows SQL's change log" in caplog.text


def test_auto_with_shared_index_on_sqlite_says_why_it_follows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with caplog.at_level(logging.WARNING, logger="logmem.memory.indexes"):
        assert resolve_kind(PGVECTOR, engine) == "auto"
        assert resolve_kind(MemoryConfig(index_kind="hnsw_sq8", shared_index=True), engine) == "hnsw_sq8"
    assert "the database is sqlite, not PostgreSQL" in caplog.text
