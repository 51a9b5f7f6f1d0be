"""A live canary on the answer path: its share of conversations is answered by the canary's adapter and the rest by
the active one, a conversation stays on its arm, every answer's log names its arm, feedback counts for that arm only,
another tenant and comparisons never see it, and with no canary nothing changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import lora
from logmem.api.answering import SERVED_MODEL, Ask, Caller

ACME, GLOBEX = Caller("acme", None), Caller("globex", None)
SERVING = {"mode": "memory+adapter", "metric": "accuracy", "figures": {}, "reason": "measured"}


def register(runtime: Any, tenant: str, folder: Path) -> str:
    return runtime.store.add_adapter(tenant=tenant, base_model="tiny", method="sft", seed=0, status="promoted",
                                     metrics={"serving": SERVING}, covered=[], path=str(folder))


@pytest.fixture
def runtime(runtime_for: Any, wordy_lm: tuple[Any, Any], tmp_path: Path) -> Any:
    runtime = runtime_for(tmp_path / "home")
    runtime.memory.ingest([{"id": "r1", "tenant": t, "messages": [
        {"role": "user", "content": "How do I reset my router?"},
        {"role": "assistant", "content": "Hold the reset button for ten seconds."}],
        "feedback": [{"turn": 1, "kind": "like"}]} for t in ("acme", "globex")])
    yield runtime
    runtime.close()


def ask(runtime: Any, caller: Caller, messages: list[dict[str, str]], **kw: Any) -> Any:
    return runtime.answer(caller, Ask(messages, model=SERVED_MODEL, max_tokens=3, **kw))


def test_a_canary_answers_its_share_and_feedback_counts_for_its_arm(runtime: Any, wordy_lm: tuple[Any, Any],
                                                                    tmp_path: Path) -> None:
    current = register(runtime, "acme", lora(wordy_lm[0], 1, tmp_path / "a1"))
    runtime.memory.promote_adapter(current, tenant="acme")
    canary_version = register(runtime, "acme", lora(wordy_lm[0], 2, tmp_path / "a2"))
    canary = runtime.memory.canaries.start(canary_version, tenant="acme", share=0.5)
    seen: dict[str, list[str]] = {"canary": [], "current": []}
    for i in range(12):
        messages = [{"role": "user", "content": f"How do I reset device {i}?"}]
        answer = ask(runtime, ACME, messages)
        logged = runtime.memory.answer(answer.reply.interaction_id, tenant="acme")
        arm = logged.served["canary"]["arm"]
        assert arm == runtime.memory.canaries.arm("acme", messages)[1]
        assert answer.adapter == logged.adapter == (canary_version if arm == "canary" else current)
        seen[arm].append(answer.reply.interaction_id)
        # the conversation's next turn stays on its arm
        later = ask(runtime, ACME, [*messages, {"role": "assistant", "content": answer.reply.text},
                                    {"role": "user", "content": "And then?"}])
        assert later.adapter == answer.adapter
    assert seen["canary"] and seen["current"]
    for iid in seen["canary"]:
        runtime.feedback(ACME, iid, "like")
    counts = runtime.store.get_canary(tenant="acme", canary_id=canary.id).arms
    assert counts["canary"]["n"] == len(seen["canary"]) and counts["canary"]["good"] > 0
    # the follow-up turns judged the first answers of the current arm's conversations (the implicit signal)
    assert counts["current"]["n"] <= len(seen["current"])
    # another tenant, a named model and a comparison never reach the canary
    other = ask(runtime, GLOBEX, [{"role": "user", "content": "How do I reset device 3?"}])
    assert "canary" not in runtime.memory.answer(other.reply.interaction_id, tenant="globex").served
    base = ask(runtime, ACME, [{"role": "user", "content": "How do I reset device 3?"}], log=False, mode="memory")
    assert base.adapter is None


def test_without_a_canary_nothing_changes(runtime: Any, wordy_lm: tuple[Any, Any], tmp_path: Path) -> None:
    current = register(runtime, "acme", lora(wordy_lm[0], 1, tmp_path / "a1"))
    runtime.memory.promote_adapter(current, tenant="acme")
    for i in range(4):
        answer = ask(runtime, ACME, [{"role": "user", "content": f"How do I reset device {i}?"}])
        assert answer.adapter == current
        assert "canary" not in runtime.memory.answer(answer.reply.interaction_id, tenant="acme").served
