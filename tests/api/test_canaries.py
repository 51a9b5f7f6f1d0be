"""The operator's canary surfaces on the real service: `/v1/canaries` lists a tenant's canaries with both arms'
counts and the live one's decision, promotes, stops and pins it (another tenant sees none of it and gets 404s), the
inspector's timeline of both arms' rates, and /metrics' series per arm (for an admin only). Outcomes come from real
answers and their feedback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import lora
from logmem.api.answering import SERVED_MODEL, Ask, Caller
from prometheus_client.parser import text_string_to_metric_families

Service = dict[str, Any]
ACME = Caller("acme", None)
SERVING = {"mode": "memory+adapter", "metric": "accuracy", "figures": {}, "reason": "measured"}


def register(runtime: Any, tenant: str, folder: Path) -> str:
    return runtime.store.add_adapter(tenant=tenant, base_model="tiny", method="sft", seed=0, status="promoted",
                                     metrics={"serving": SERVING}, covered=[], path=str(folder))


def rate(runtime: Any, conversations: int = 12) -> dict[str, list[str]]:
    """Answer `conversations` new conversations of acme and rate them: every canary answer liked, every current one
    disliked; the interaction ids per arm."""
    arms: dict[str, list[str]] = {"canary": [], "current": []}
    for i in range(conversations):
        answer = runtime.answer(ACME, Ask([{"role": "user", "content": f"How do I reset device {i}?"}],
                                          model=SERVED_MODEL, max_tokens=3))
        iid = answer.reply.interaction_id
        arm = runtime.memory.answer(iid, tenant="acme").served["canary"]["arm"]
        runtime.feedback(ACME, iid, "like" if arm == "canary" else "dislike")
        arms[arm].append(iid)
    assert arms["canary"] and arms["current"]
    return arms


@pytest.fixture
def acme(service: Service, wordy_lm: tuple[Any, Any], tmp_path: Path) -> dict[str, Any]:
    """Acme with an active adapter and a live canary (half its conversations) rated on both arms."""
    runtime = service["runtime"]
    runtime.memory.ingest([{"id": f"r{t}", "tenant": t, "messages": [
        {"role": "user", "content": "How do I reset my router?"},
        {"role": "assistant", "content": "Hold the reset button for ten seconds."}],
        "feedback": [{"turn": 1, "kind": "like"}]} for t in ("acme", "globex")])
    current = register(runtime, "acme", lora(wordy_lm[0], 1, tmp_path / "a1"))
    runtime.memory.promote_adapter(current, tenant="acme")
    version = register(runtime, "acme", lora(wordy_lm[0], 2, tmp_path / "a2"))
    canary = runtime.memory.canaries.start(version, tenant="acme", share=0.5)
    return {"current": current, "version": version, "canary": canary, "arms": rate(runtime)}


def test_a_tenant_lists_its_canary_with_both_arms_and_the_decision(service: Service, acme: dict[str, Any]) -> None:
    client, arms = service["client"], acme["arms"]
    (live,) = client.get("/v1/canaries", headers=service["acme"]).json()
    assert (live["version"], live["current"], live["status"], live["share"]) == (acme["version"], acme["current"],
                                                                                 "live", 0.5)
    assert live["arms"]["canary"] == {"n": len(arms["canary"]), "good": len(arms["canary"]), "rate": 1.0}
    assert live["arms"]["current"]["n"] == len(arms["current"]) and live["arms"]["current"]["rate"] == 0.0
    decision = live["decision"]
    assert decision["verdict"] == "continue" and "waiting for 50 rated outcomes" in decision["reason"]
    assert decision["e_better"] > 1.0 > decision["e_worse"]
    assert (decision["promote_threshold"], decision["rollback_threshold"]) == (20.0, 20.0)
    assert client.get("/v1/canaries", headers=service["globex"]).json() == []  # another tenant sees none
    assert client.get("/v1/canaries").status_code == 401


def test_another_tenant_cannot_promote_stop_or_pin_it(service: Service, acme: dict[str, Any]) -> None:
    client, globex = service["client"], service["globex"]
    for path, body in (("promote", None), ("stop", None), ("pin", {"pinned": True})):
        r = client.post(f"/v1/canaries/{path}", headers=globex, json=body)
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error", (path, r.text)
        assert client.post(f"/v1/canaries/{path}", json=body).status_code == 401
    assert service["runtime"].memory.canaries.live("acme").status == "live"  # type: ignore[union-attr]
    assert client.post("/v1/canaries/pin", headers=service["acme"], json={"pinned": "maybe"}).status_code == 422


def test_pin_then_promote_and_the_adapter_serves_everyone(service: Service, acme: dict[str, Any]) -> None:
    client, headers, runtime = service["client"], service["acme"], service["runtime"]
    pinned = client.post("/v1/canaries/pin", headers=headers, json={"pinned": True}).json()
    assert pinned["pinned"] is True and pinned["status"] == "live"
    assert client.post("/v1/canaries/pin", headers=headers, json={"pinned": False}).json()["pinned"] is False
    promoted = client.post("/v1/canaries/promote", headers=headers).json()
    assert (promoted["status"], promoted["reason"], promoted["pushed"]) == ("promoted", "promoted by an operator", None)
    assert promoted["decision"]["canary"] == {"good": len(acme["arms"]["canary"]), "n": len(acme["arms"]["canary"])}
    assert runtime.memory.active_adapter("acme").version == acme["version"]
    assert client.post("/v1/canaries/promote", headers=headers).status_code == 404  # none is live now
    (ended,) = client.get("/v1/canaries", headers=headers).json()
    assert ended["status"] == "promoted" and ended["decided_at"] >= ended["started_at"]


def test_stop_leaves_the_current_adapter_serving(service: Service, acme: dict[str, Any]) -> None:
    client, headers, runtime = service["client"], service["acme"], service["runtime"]
    stopped = client.post("/v1/canaries/stop", headers=headers).json()
    assert (stopped["status"], stopped["reason"]) == ("stopped", "stopped by an operator")
    assert runtime.memory.active_adapter("acme").version == acme["current"]
    assert runtime.memory.canaries.live("acme") is None
    assert client.post("/v1/canaries/stop", headers=headers).status_code == 404


def test_the_timeline_has_each_arms_rate_over_time(service: Service, acme: dict[str, Any]) -> None:
    client, arms, cid = service["client"], acme["arms"], acme["canary"].id
    timeline = client.get(f"/v1/canaries/{cid}/timeline", headers=service["acme"]).json()
    canary, current = timeline["canary"], timeline["current"]
    assert canary["n"] == list(range(1, len(arms["canary"]) + 1)) and set(canary["rate"]) == {1.0}
    assert current["n"] == list(range(1, len(arms["current"]) + 1)) and set(current["rate"]) == {0.0}
    assert canary["at"] == sorted(canary["at"])
    assert client.get(f"/v1/canaries/{cid}/timeline", headers=service["globex"]).status_code == 404
    assert client.get(f"/v1/canaries/{cid}/timeline").status_code == 401


def test_metrics_export_both_arms_and_the_e_values_for_an_admin(service: Service, acme: dict[str, Any]) -> None:
    client, arms = service["client"], acme["arms"]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in
               text_string_to_metric_families(client.get("/metrics", headers=service["admin"]).text)
               for s in family.samples}
    for arm, good in (("canary", len(arms["canary"])), ("current", 0)):
        assert samples[("logmem_canary_outcomes", (("arm", arm), ("tenant", "acme")))] == len(arms[arm])
        assert samples[("logmem_canary_good", (("arm", arm), ("tenant", "acme")))] == good
    decision = service["runtime"].canary(ACME).decision
    assert samples[("logmem_canary_evalue", (("direction", "better"), ("tenant", "acme")))] == pytest.approx(
        decision["e_better"])
    assert samples[("logmem_canary_evalue", (("direction", "worse"), ("tenant", "acme")))] == pytest.approx(
        decision["e_worse"])
    assert not [k for k in samples if k[0].startswith("logmem_canary") and ("tenant", "globex") in k[1]]
    assert "logmem_canary" not in client.get("/metrics").text  # tenant names are an admin's to read
    client.post("/v1/canaries/stop", headers=service["acme"])
    after = client.get("/metrics", headers=service["admin"]).text
    assert 'logmem_canary_outcomes{' not in after  # only live canaries are exported
