"""The adapter registry in the store: versions, one active adapter per tenant, activation and rollback,
staleness when covered experiences are forgotten; on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from logmem.memory import AdapterError, NotFoundError
from logmem.memory.stats import compute_stats
from logmem.memory.store import AdapterRow, Store
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'memory.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_db")
    s = Store(url)
    yield s
    s.close()


def seed(store: Store, tenant: str, n: int) -> list[int]:
    """`n` experiences in `tenant`, the i-th from user `<tenant>-u<i>`; returns their ids."""
    ids = []
    with store.transaction() as tx:
        for i in range(n):
            user = f"{tenant}-u{i}"
            pk = store.add_interaction(tx, record={"tenant": tenant, "id": f"{tenant}-{i}", "user": user,
                                                   "messages": []}, status="experience")
            ids.append(store.add_experience(
                tx, tenant=tenant, user=user, content_hash=f"h{i}", instruction=None, trigger=f"question {i}",
                response=f"answer {i}", lesson=None, rejected=None, vector=np.full(4, 0.5, dtype=np.float32),
                alpha=2.0, beta=1.0, timestamp=T0, interaction_id=pk))
    return ids


def add(store: Store, tenant: str = "acme", status: str = "promoted", covered: Sequence[int] = (),
        **kw: Any) -> str:
    fields: dict[str, Any] = dict(base_model="smollm2-135m", method="sft", seed=0,
                                  metrics={"student": 0.8, "base": 0.6}, path=f"/adapters/{tenant}")
    fields.update(kw)
    return store.add_adapter(tenant=tenant, status=status, covered=covered, **fields)


def active_versions(store: Store, tenant: str) -> list[str]:
    return [a.version for a in store.adapters(tenant=tenant) if a.active]


def test_versions_count_up_across_the_store_and_read_back_whole(store: Store) -> None:
    v1 = add(store, "acme", covered=(3, 1, 2, 3), metrics={"student": np.float32(0.75)}, seed=7)
    v2 = add(store, "globex", status="rejected", method="sft+kd")
    v3 = add(store, "acme", method="kd")

    assert (v1, v2, v3) == ("v1", "v2", "v3")
    assert [a.version for a in store.adapters(tenant="acme")] == ["v1", "v3"]
    assert [a.version for a in store.adapters(tenant=None)] == ["v1", "v2", "v3"]
    a = store.get_adapter(version="v1")
    assert (a.tenant, a.method, a.seed, a.status, a.active, a.previous, a.stale_at) == \
        ("acme", "sft", 7, "promoted", False, None, None)
    assert a.covered == (1, 2, 3) and a.metrics == {"student": 0.75}
    assert store.active_adapter(tenant="acme") is None
    with pytest.raises(NotFoundError, match="no adapter 'v9'"):
        store.get_adapter(version="v9")


def test_bad_method_or_status_is_refused(store: Store) -> None:
    with pytest.raises(AdapterError, match="method must be one of sft, kd, sft\\+kd, got 'dpo'"):
        add(store, method="dpo")
    with pytest.raises(AdapterError, match="'promoted' or 'rejected'"):
        add(store, status="stale")
    assert store.adapters(tenant=None) == []


def test_activate_then_rollback_walks_back_to_the_base_model(store: Store) -> None:
    v1, v2 = add(store), add(store)

    assert store.activate_adapter(tenant="acme", version=v1).previous is None
    after = store.activate_adapter(tenant="acme", version=v2)
    assert (after.active, after.previous) == (True, v1)
    assert active_versions(store, "acme") == [v2]

    assert store.rollback_adapter(tenant="acme") == v1
    assert store.active_adapter(tenant="acme").version == v1  # type: ignore[union-attr]
    assert store.rollback_adapter(tenant="acme") is None
    assert store.active_adapter(tenant="acme") is None and active_versions(store, "acme") == []
    assert store.rollback_adapter(tenant="acme") is None  # already the base model


def test_activating_the_active_one_keeps_its_rollback_target(store: Store) -> None:
    v1, v2 = add(store), add(store)
    store.activate_adapter(tenant="acme", version=v1)
    store.activate_adapter(tenant="acme", version=v2)

    again = store.activate_adapter(tenant="acme", version=v2)

    assert again.previous == v1  # not itself: a rollback still goes back to v1
    assert store.rollback_adapter(tenant="acme") == v1


def test_the_database_holds_one_active_adapter_per_tenant(store: Store) -> None:
    v1, v2, g1 = add(store), add(store), add(store, "globex")
    store.activate_adapter(tenant="acme", version=v1)
    store.activate_adapter(tenant="globex", version=g1)

    with pytest.raises(IntegrityError):  # even a write behind the store's back cannot make a second one
        with store.transaction() as tx:
            tx.execute(update(AdapterRow).where(AdapterRow.version == v2).values(active=True))

    assert active_versions(store, "acme") == [v1] and active_versions(store, "globex") == [g1]


def test_concurrent_activations_leave_exactly_one_active(store: Store) -> None:
    versions = [add(store) for _ in range(4)]
    errors: list[Exception] = []
    start = threading.Barrier(len(versions))

    def flip(version: str) -> None:
        try:
            start.wait()
            for _ in range(5):
                store.activate_adapter(tenant="acme", version=version)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=flip, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(active_versions(store, "acme")) == 1


def test_concurrent_registrations_get_distinct_versions(store: Store) -> None:
    got: list[str] = []
    start = threading.Barrier(4)

    def register() -> None:
        start.wait()
        for _ in range(3):
            got.append(add(store))

    threads = [threading.Thread(target=register) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(got, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 13)]


def test_rejected_never_activates_and_stale_only_with_force(store: Store) -> None:
    e = seed(store, "acme", 2)
    bad = add(store, status="rejected", metrics={"student": 0.5, "base": 0.6})
    old, new = add(store, covered=(e[0],)), add(store, covered=(e[1],))

    with pytest.raises(AdapterError, match=f"adapter {bad} was rejected by the gate \\(student=0.5, base=0.6\\)"):
        store.activate_adapter(tenant="acme", version=bad)
    store.activate_adapter(tenant="acme", version=new)
    store.forget(experience_id=e[0])
    with pytest.raises(AdapterError, match=f"adapter {old} is stale"):
        store.activate_adapter(tenant="acme", version=old)
    assert active_versions(store, "acme") == [new]

    assert store.activate_adapter(tenant="acme", version=old, force=True).active
    assert active_versions(store, "acme") == [old]


def test_forgetting_an_experience_marks_the_adapters_that_covered_it_stale(store: Store) -> None:
    e = seed(store, "acme", 3)
    v1 = add(store, covered=(e[0], e[1]))
    v2 = add(store, covered=(e[2],))
    v3 = add(store, status="rejected", covered=(e[0],))
    store.activate_adapter(tenant="acme", version=v1)

    store.forget(experience_id=e[1])

    a1, a2, a3 = (store.get_adapter(version=v) for v in (v1, v2, v3))
    assert (a1.status, a1.active) == ("stale", True)  # still serving until someone acts, but flagged
    assert a1.stale_at is not None
    assert (a2.status, a2.stale_at) == ("promoted", None)
    assert (a3.status, a3.stale_at) == ("rejected", None)  # did not cover e[1]
    stats = compute_stats(store.counts(tenant="acme"), {}).adapters["acme"]
    assert stats == {"active": v1, "active_status": "stale", "versions": 3, "stale": [v1]}


def test_forgetting_a_user_or_a_tenant_marks_covering_adapters_stale(store: Store) -> None:
    a, g = seed(store, "acme", 2), seed(store, "globex", 1)
    va0, va1 = add(store, covered=(a[0],)), add(store, covered=(a[1],))
    vr = add(store, status="rejected", covered=(a[1],))
    vg = add(store, "globex", covered=(g[0],))

    store.forget(user="acme-u1")
    assert [store.get_adapter(version=v).status for v in (va0, va1, vr, vg)] == \
        ["promoted", "stale", "rejected", "promoted"]
    assert store.get_adapter(version=vr).stale_at is not None  # a rejected one keeps its status, flagged

    store.forget(tenant="acme")
    assert [store.get_adapter(version=v).status for v in (va0, va1, vg)] == ["stale", "stale", "promoted"]


def test_rollback_passes_over_a_stale_adapter(store: Store) -> None:
    e = seed(store, "acme", 2)
    v1, v2 = add(store, covered=(e[0],)), add(store, covered=(e[1],))
    store.activate_adapter(tenant="acme", version=v1)
    store.activate_adapter(tenant="acme", version=v2)
    store.forget(experience_id=e[0])

    assert store.rollback_adapter(tenant="acme") is None  # v1 holds forgotten data: straight to the base model
    assert active_versions(store, "acme") == []


def test_tenants_are_separate(store: Store) -> None:
    a, g = seed(store, "acme", 3), seed(store, "globex", 2)
    va, vg = add(store, "acme", covered=a[:2]), add(store, "globex", covered=g)
    store.activate_adapter(tenant="acme", version=va)

    with pytest.raises(NotFoundError, match=f"no adapter '{vg}' in tenant 'acme'"):
        store.activate_adapter(tenant="acme", version=vg)
    with pytest.raises(NotFoundError, match=f"no adapter '{va}' in tenant 'globex'"):
        store.mark_consolidated(tenant="globex", experience_ids=g, version=va)
    assert store.rollback_adapter(tenant="globex") is None
    assert store.active_adapter(tenant="acme").version == va  # type: ignore[union-attr]

    # another tenant's ids are not touched, whatever the caller passes
    assert store.mark_consolidated(tenant="acme", experience_ids=[*a[:2], *g], version=va) == 2
    assert compute_stats(store.counts(tenant="acme"), {}).consolidated_share == pytest.approx(2 / 3)
    assert compute_stats(store.counts(tenant="globex"), {}).consolidated_share == 0.0
    marked = store.get_experiences(tenant="acme", ids=a)
    assert [marked[i].consolidated_in for i in a] == [va, va, None]

    store.forget(experience_id=g[0])
    assert store.get_adapter(version=va).status == "promoted"
    assert store.get_adapter(version=vg).status == "stale"
