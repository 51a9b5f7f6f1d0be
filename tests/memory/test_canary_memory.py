"""Canaries in the memory: a promoted adapter answers a share of a tenant's conversations, each conversation stays
on its arm, feedback counts for the arm that answered it (a conversation once), the outcomes promote or roll the
canary back from SQL (any process), and activation, rollback, an operator and an erasure end it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from logmem.memory import Embedder, VectorMemory
from logmem.memory.canaries import conversation_key, served_as
from logmem.memory.canary import CanaryConfig
from logmem.memory.errors import AdapterError, NotFoundError
from logmem.memory.store.schema import CanaryOutcomeRow
from sqlalchemy import func, select
from sqlalchemy.orm import Session

SERVING = {"mode": "memory+adapter", "metric": "accuracy", "figures": {"memory+adapter": 0.9, "vote": 0.7},
           "reason": "memory+adapter measured best"}
FAST = CanaryConfig(share=0.5, min_outcomes=5, budget=200)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """Each test on SQLite and on a real PostgreSQL (the upsert of outcomes, the one-live index)."""
    return request.getfixturevalue("pg_db") if request.param == "postgresql" else None


@pytest.fixture
def memory(tmp_path: Path, embedder: Embedder, db_url: str | None) -> Iterator[VectorMemory]:
    with VectorMemory(tmp_path, embedder=embedder, db_url=db_url) as memory:
        memory.ingest([{"id": "r1", "tenant": "t", "user": "ann",
                        "messages": [{"role": "user", "content": "How do I reset my router?"},
                                     {"role": "assistant", "content": "Hold the reset button for ten seconds."}],
                        "feedback": [{"turn": 1, "kind": "like"}]}])
        yield memory


def adapter(memory: VectorMemory, tenant: str = "t", covered: tuple[int, ...] = ()) -> str:
    return memory.store.add_adapter(tenant=tenant, base_model="m", method="sft", seed=0, status="promoted",
                                    metrics={"serving": SERVING}, covered=covered, path="/nowhere")


def served(memory: VectorMemory, tenant: str, i: int, *, user: str | None = None) -> tuple[str, str]:
    """Log an answer to conversation i as the serving path does (its arm from the live canary); (id, arm)."""
    messages = [{"role": "user", "content": f"question number {i}"}]
    found = memory.canaries.arm(tenant, messages, user)
    assert found is not None
    memory.log_answer(tenant=tenant, interaction_id=f"a{i}", messages=messages, answer=f"answer {i}", hits=[],
                      user=user, details={"canary": served_as(*found)})
    return f"a{i}", found[1]


def test_a_conversation_keeps_its_key_and_its_arm(memory: VectorMemory) -> None:
    opening = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, my router blinks."}]
    later = [*opening, {"role": "assistant", "content": "Which light?"}, {"role": "user", "content": "The red one."}]
    assert conversation_key(opening, "ann") == conversation_key(later, "ann")
    assert conversation_key(opening, "ann") != conversation_key(opening, "bob")
    memory.canaries.start(adapter(memory), tenant="t", share=0.3)
    arms = [memory.canaries.arm("t", [{"role": "user", "content": f"q{i}"}])[1] for i in range(400)]  # type: ignore
    assert 0.2 < arms.count("canary") / len(arms) < 0.4
    assert memory.canaries.arm("t", opening, "ann")[1] == memory.canaries.arm("t", later, "ann")[1]  # type: ignore
    assert memory.canaries.arm("other", opening) is None  # another tenant has no canary


def test_only_a_promoted_inactive_adapter_of_the_tenant_starts_and_one_is_live(memory: VectorMemory) -> None:
    first, second = adapter(memory), adapter(memory)
    other = adapter(memory, tenant="u")
    with pytest.raises(NotFoundError):
        memory.canaries.start(other, tenant="t", share=0.1)
    memory.activate_adapter(first, tenant="t")
    with pytest.raises(AdapterError, match="active"):
        memory.canaries.start(first, tenant="t", share=0.1)
    with pytest.raises(AdapterError, match="mode"):
        memory.canaries.start(second, tenant="t", share=0.1, mode="vote")
    a = memory.canaries.start(second, tenant="t", share=0.1)
    assert (a.version, a.mode, a.current, a.status) == (second, "memory+adapter", first, "live")
    third = adapter(memory)
    b = memory.canaries.start(third, tenant="t", share=0.1)
    history = memory.store.canaries(tenant="t")
    assert [(c.version, c.status) for c in history] == [(third, "live"), (second, "stopped")]
    assert "replaced" in history[1].reason and memory.canaries.live("t").id == b.id  # type: ignore[union-attr]


def test_feedback_counts_for_the_arm_that_answered_once_per_conversation(memory: VectorMemory) -> None:
    canary = memory.canaries.start(adapter(memory), tenant="t", share=0.5, config=FAST)
    answered = [served(memory, "t", i) for i in range(8)]
    arms = {arm for _, arm in answered}
    assert arms == {"canary", "current"}
    for iid, arm in answered:
        memory.feedback(iid, "like" if arm == "canary" else "dislike", tenant="t")
    first, first_arm = answered[0]
    again = memory.feedback(first, "like" if first_arm == "canary" else "dislike", tenant="t")  # a retry
    assert again.duplicate
    counts = memory.store.get_canary(tenant="t", canary_id=canary.id).arms
    on_canary = sum(arm == "canary" for _, arm in answered)
    assert counts["canary"] == {"n": on_canary, "good": on_canary}
    assert counts["current"] == {"n": 8 - on_canary, "good": 0.0}
    # a second answer in one conversation: the conversation still counts once, as the mean of its outcomes
    iid, arm = answered[0]
    messages = [{"role": "user", "content": "question number 0"}, {"role": "assistant", "content": "answer 0"},
                {"role": "user", "content": "and then?"}]
    found = memory.canaries.arm("t", messages)
    assert found is not None and found[1] == arm
    memory.log_answer(tenant="t", interaction_id="again", messages=messages, answer="more", hits=[],
                      details={"canary": served_as(*found)})
    memory.feedback("again", "dislike", tenant="t")
    counts = memory.store.get_canary(tenant="t", canary_id=canary.id).arms
    assert counts[arm]["n"] == (on_canary if arm == "canary" else 8 - on_canary)
    assert counts[arm]["good"] == pytest.approx((on_canary - 0.5) if arm == "canary" else 0.0)


def test_outcomes_promote_a_better_canary_from_sql(memory: VectorMemory, tmp_path: Path, embedder: Embedder,
                                                   db_url: str | None) -> None:
    before = adapter(memory)
    memory.activate_adapter(before, tenant="t")
    covered = tuple(e.id for e in memory.experiences(tenant="t")[1])
    version = adapter(memory, covered=covered)
    canary = memory.canaries.start(version, tenant="t", share=0.5, config=FAST)
    # a second process (another worker) on the same database rates half the answers: the counts add up in SQL
    with VectorMemory(tmp_path, embedder=embedder, db_url=db_url) as worker:
        i = 0
        while memory.store.get_canary(tenant="t", canary_id=canary.id).status == "live":
            iid, arm = served(memory, "t", i)
            (worker if i % 2 else memory).feedback(iid, "like" if arm == "canary" else "dislike", tenant="t")
            i += 1
            assert i < 200, "no decision"
    ended = memory.store.get_canary(tenant="t", canary_id=canary.id)
    assert ended.status == "promoted" and ended.decision["verdict"] == "promote"  # type: ignore[index]
    assert ended.decision["e_better"] >= FAST.promote_threshold  # type: ignore[index]
    assert memory.active_adapter("t").version == version  # type: ignore[union-attr]
    mode = memory.serving_mode("t")
    assert mode is not None and (mode.mode, mode.adapter) == ("memory+adapter", version)
    marked = {e.id: e.consolidated_in for e in memory.experiences(tenant="t")[1]}
    assert covered and all(marked[i] == version for i in covered)
    assert memory.canaries.live("t") is None and memory.canaries.arm("t", [{"role": "user", "content": "x"}]) is None


def test_outcomes_roll_a_worse_canary_back(memory: VectorMemory) -> None:
    before = adapter(memory)
    memory.activate_adapter(before, tenant="t")
    canary = memory.canaries.start(adapter(memory), tenant="t", share=0.5, config=FAST)
    i = 0
    while memory.store.get_canary(tenant="t", canary_id=canary.id).status == "live":
        iid, arm = served(memory, "t", i)
        memory.feedback(iid, "dislike" if arm == "canary" else "like", tenant="t")
        i += 1
        assert i < 200, "no decision"
    ended = memory.store.get_canary(tenant="t", canary_id=canary.id)
    assert ended.status == "rolled_back" and "worse" in ended.reason
    assert memory.active_adapter("t").version == before  # type: ignore[union-attr]


def test_a_pinned_canary_waits_for_the_operator(memory: VectorMemory) -> None:
    version = adapter(memory)
    canary = memory.canaries.start(version, tenant="t", share=0.5, config=FAST)
    memory.canaries.pin("t")
    for i in range(40):
        iid, arm = served(memory, "t", i)
        memory.feedback(iid, "like" if arm == "canary" else "dislike", tenant="t")
    assert memory.store.get_canary(tenant="t", canary_id=canary.id).status == "live"
    assert memory.canaries.decision(memory.store.get_canary(tenant="t", canary_id=canary.id)).verdict == "promote"
    ended = memory.canaries.promote("t")
    assert ended.status == "promoted" and memory.active_adapter("t").version == version  # type: ignore[union-attr]
    with pytest.raises(NotFoundError):
        memory.canaries.stop("t")


@pytest.mark.parametrize("how", ["activate", "rollback", "stop", "forget"])
def test_activation_rollback_an_operator_and_an_erasure_end_a_live_canary(memory: VectorMemory, how: str) -> None:
    before = adapter(memory)
    memory.activate_adapter(before, tenant="t")
    covered = tuple(e.id for e in memory.experiences(tenant="t")[1])
    version = adapter(memory, covered=covered)
    memory.canaries.start(version, tenant="t", share=0.2)
    if how == "activate":
        memory.activate_adapter(adapter(memory), tenant="t")
    elif how == "rollback":
        memory.rollback_adapter("t")
    elif how == "stop":
        memory.canaries.stop("t")
    else:
        memory.forget(user="ann", tenant="t")
    (ended,) = memory.store.canaries(tenant="t")
    assert ended.status == "stopped" and memory.canaries.live("t") is None
    assert {"activate": "activated", "rollback": "rolled back", "stop": "operator",
            "forget": "forgotten"}[how] in ended.reason


def test_a_canary_survives_a_restart(tmp_path: Path, embedder: Embedder, db_url: str | None) -> None:
    with VectorMemory(tmp_path, embedder=embedder, db_url=db_url) as memory:
        version = adapter(memory)
        memory.canaries.start(version, tenant="t", share=0.25, config=CanaryConfig(share=0.25, budget=300))
        iid, arm = served(memory, "t", 1)
        memory.feedback(iid, "like", tenant="t")
    with VectorMemory(tmp_path, embedder=embedder, db_url=db_url) as again:
        live = again.canaries.live("t")
        assert live is not None and (live.version, live.share, live.config["budget"]) == (version, 0.25, 300)
        assert again.canaries.arm("t", [{"role": "user", "content": "question number 1"}])[1] == arm  # type: ignore
        assert again.store.get_canary(tenant="t", canary_id=live.id).arms[arm]["n"] == 1


def test_forgetting_a_tenant_removes_its_canaries_and_their_outcomes(memory: VectorMemory) -> None:
    canary = memory.canaries.start(adapter(memory), tenant="t", share=0.5)
    iid, _ = served(memory, "t", 1)
    memory.feedback(iid, "like", tenant="t")
    other = memory.canaries.start(adapter(memory, tenant="u"), tenant="u", share=0.5)
    memory.forget(tenant="t")
    assert memory.store.canaries(tenant="t") == [] and memory.canaries.live("t") is None
    with pytest.raises(NotFoundError):
        memory.store.canary_timeline(tenant="t", canary_id=canary.id)
    assert memory.canaries.live("u").id == other.id  # type: ignore[union-attr]
    with Session(memory.store.engine) as s:
        assert s.scalar(select(func.count()).select_from(CanaryOutcomeRow)) == 0


def test_a_canary_undecided_at_its_budget_ends_and_the_current_arm_keeps_serving(memory: VectorMemory) -> None:
    before = adapter(memory)
    memory.activate_adapter(before, tenant="t")
    version = adapter(memory)
    canary = memory.canaries.start(version, tenant="t", share=0.5,
                                   config=CanaryConfig(share=0.5, min_outcomes=5, budget=12))
    i = 0
    while memory.store.get_canary(tenant="t", canary_id=canary.id).status == "live":
        iid, _ = served(memory, "t", i)
        memory.feedback(iid, "like" if i % 2 else "dislike", tenant="t")  # both arms alike
        i += 1
        assert i < 200, "no end"
    ended = memory.store.get_canary(tenant="t", canary_id=canary.id)
    assert ended.status == "undecided" and ended.decision["verdict"] == "no_decision"  # type: ignore[index]
    assert "current arm keeps serving" in ended.reason
    assert memory.active_adapter("t").version == before  # type: ignore[union-attr]
    assert memory.store.get_adapter(version=version).status == "promoted"  # as the gate left it: activatable
