"""Adapter lineage in the store: parent and held-out ids read back, staleness passed down a lineage on
forgetting, and a database made before the lineage columns gets them on open; SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from logmem.memory import AdapterError
from logmem.memory.store import Store
from sqlalchemy import create_engine, inspect, text

T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'memory.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_db")


@pytest.fixture()
def store(url: str) -> Iterator[Store]:
    s = Store(url)
    yield s
    s.close()


def seed(store: Store, tenant: str, n: int) -> list[int]:
    ids = []
    with store.transaction() as tx:
        for i in range(n):
            pk = store.add_interaction(tx, record={"tenant": tenant, "id": f"{tenant}-{i}", "user": f"u{i}",
                                                   "messages": []}, status="experience")
            ids.append(store.add_experience(
                tx, tenant=tenant, user=f"u{i}", content_hash=f"h{i}", instruction=None, trigger=f"question {i}",
                response=f"answer {i}", lesson=None, rejected=None, vector=np.full(4, 0.5, dtype=np.float32),
                alpha=2.0, beta=1.0, timestamp=T0, interaction_id=pk))
    return ids


def add(store: Store, tenant: str = "acme", **kw: object) -> str:
    fields: dict = dict(base_model="smollm2-135m", method="sft", seed=0, status="promoted", metrics={},
                        path=f"/adapters/{tenant}", covered=())
    fields.update(kw)
    return store.add_adapter(tenant=tenant, **fields)


def test_parent_and_holdout_read_back(store: Store) -> None:
    v1 = add(store, covered=(1, 2), holdout=(5, 3))
    v2 = add(store, covered=(4,), parent=v1)
    a1, a2 = store.get_adapter(version=v1), store.get_adapter(version=v2)
    assert (a1.parent, a1.holdout, a2.parent, a2.holdout) == (None, (3, 5), v1, ())
    assert a2.to_json()["parent"] == v1 and a1.to_json()["holdout"] == [3, 5]
    other = add(store, tenant="globex")
    with pytest.raises(AdapterError, match=f"parent adapter {other} belongs to tenant 'globex', not 'acme'"):
        add(store, parent=other)


def test_forgetting_marks_the_whole_lineage_below_stale(store: Store) -> None:
    ids = seed(store, "acme", 6)
    v1 = add(store, covered=ids[:2])
    v2 = add(store, covered=ids[2:4], parent=v1)
    v3 = add(store, covered=ids[4:5], parent=v2)
    elsewhere = add(store, covered=ids[5:])  # another lineage of the tenant, from the base
    store.forget(experience_id=ids[2])  # taught by v2: v2 and v3 (trained on from v2) hold it, v1 does not
    status = {v: store.get_adapter(version=v).status for v in (v1, v2, v3, elsewhere)}
    assert status == {v1: "promoted", v2: "stale", v3: "stale", elsewhere: "promoted"}


def test_a_database_made_before_lineage_gets_the_columns(url: str) -> None:
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:  # the table as it was released: no parent, no holdout
        conn.execute(text("ALTER TABLE adapters DROP COLUMN parent"))
        conn.execute(text("ALTER TABLE adapters DROP COLUMN holdout"))
    assert {"parent", "holdout"}.isdisjoint(c["name"] for c in inspect(engine).get_columns("adapters"))
    engine.dispose()
    for _ in range(2):  # idempotent
        store = Store(url)
        v1 = add(store, covered=(1,), holdout=(2,))
        assert store.get_adapter(version=add(store, parent=v1)).parent == v1
        store.close()
