"""`logmem canary`: the live canary's arms (rated conversations, good-outcome rates), e-values against their thresholds
and verdict, the canaries that ended; an operator pins, unpins, stops and promotes it. The outcomes come from real
answers and their feedback; the command reads the SQL store alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import lora
from logmem.api.answering import SERVED_MODEL, Ask, Caller
from logmem.api.cli import EXIT_ERROR, EXIT_OK, build_parser, main

ACME = Caller("acme", None)
SERVING = {"mode": "memory+adapter", "metric": "accuracy", "figures": {}, "reason": "measured"}


def run(capsys: pytest.CaptureFixture[str], home: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), "canary", "--tenant", "acme", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def canary_with_outcomes(runtime: Any, base: Any, folder: Path, seed: int) -> tuple[str, dict[str, int]]:
    """A new promoted adapter of acme started as its canary for half its conversations, then eight conversations
    answered and rated (liked on the canary's arm, disliked on the current one); (its version, rated per arm)."""
    version = runtime.store.add_adapter(tenant="acme", base_model="tiny", method="sft", seed=seed, status="promoted",
                                        metrics={"serving": SERVING}, covered=[], path=str(lora(base, seed, folder)))
    runtime.memory.canaries.start(version, tenant="acme", share=0.5)
    rated = {"canary": 0, "current": 0}
    for i in range(8):
        answer = runtime.answer(ACME, Ask([{"role": "user", "content": f"Canary {seed}: how do I reset device {i}?"}],
                                          model=SERVED_MODEL, max_tokens=3))
        iid = answer.reply.interaction_id
        arm = runtime.memory.answer(iid, tenant="acme").served["canary"]["arm"]
        runtime.feedback(ACME, iid, "like" if arm == "canary" else "dislike")
        rated[arm] += 1
    assert rated["canary"] and rated["current"]
    return version, rated


@pytest.fixture
def home(tmp_path: Path, runtime_for: Any) -> Path:
    """Acme's home with an active adapter; no canary yet."""
    home = tmp_path / "home"
    runtime = runtime_for(home)
    runtime.memory.ingest([{"id": "r1", "tenant": "acme", "messages": [
        {"role": "user", "content": "How do I reset my router?"},
        {"role": "assistant", "content": "Hold the reset button for ten seconds."}],
        "feedback": [{"turn": 1, "kind": "like"}]}])
    runtime.close()
    return home


def test_status_pin_unpin_and_stop(home: Path, runtime_for: Any, wordy_lm: tuple[Any, Any], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    runtime = runtime_for(home)
    current = runtime.store.add_adapter(tenant="acme", base_model="tiny", method="sft", seed=1, status="promoted",
                                        metrics={"serving": SERVING}, covered=[],
                                        path=str(lora(wordy_lm[0], 1, tmp_path / "a1")))
    runtime.memory.promote_adapter(current, tenant="acme")
    version, rated = canary_with_outcomes(runtime, wordy_lm[0], tmp_path / "a2", 2)
    runtime.close()

    code, out, _ = run(capsys, home)
    assert code == EXIT_OK
    assert out.startswith(f"acme: canary 1, adapter {version} (live): 50% of conversations in memory+adapter, "
                          f"against adapter {current}")
    assert f"canary   {rated['canary']:>6} rated conversations, good-outcome rate 1.000" in out
    assert f"current  {rated['current']:>6} rated conversations, good-outcome rate 0.000" in out
    assert "(promotes at 20)" in out and "(rolls back at 20)" in out and "verdict continue: waiting for 50" in out
    code, out, _ = run(capsys, home, "--json")
    (live,) = json.loads(out)["canaries"]
    assert live["arms"]["canary"]["n"] == rated["canary"] and live["decision"]["e_better"] > 1.0

    assert json.loads(run(capsys, home, "pin", "--json")[1])["pinned"] is True
    assert "live, pinned" in run(capsys, home)[1]
    assert json.loads(run(capsys, home, "unpin", "--json")[1])["pinned"] is False
    code, out, _ = run(capsys, home, "stop")
    assert code == EXIT_OK and "stopped" in out and "stopped by an operator" in out
    code, out, _ = run(capsys, home)
    assert out.startswith("acme: no live canary\nended (1):") and version in out
    code, _, err = run(capsys, home, "promote")
    assert code == EXIT_ERROR and "has no live canary" in err
    adapters = json.loads(_adapters(capsys, home))
    assert [a["version"] for a in adapters if a["active"]] == [current]  # a stop leaves the current arm serving


def test_promote_makes_the_canary_active(home: Path, runtime_for: Any, wordy_lm: tuple[Any, Any], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    runtime = runtime_for(home)
    version, rated = canary_with_outcomes(runtime, wordy_lm[0], tmp_path / "a3", 3)  # against the base model
    runtime.close()
    code, out, _ = run(capsys, home, "promote", "--json")
    promoted = json.loads(out)
    assert code == EXIT_OK and (promoted["status"], promoted["version"]) == ("promoted", version)
    assert promoted["decision"]["canary"]["n"] == rated["canary"]
    assert [a["version"] for a in json.loads(_adapters(capsys, home)) if a["active"]] == [version]


def test_consolidate_takes_a_canary_share() -> None:
    args = build_parser().parse_args(["consolidate", "--canary-share", "0.1"])
    assert args.canary_share == 0.1
    assert build_parser().parse_args(["consolidate"]).canary_share == 0.0  # off by default


def _adapters(capsys: pytest.CaptureFixture[str], home: Path) -> str:
    assert main(["--home", str(home), "adapters", "--tenant", "acme", "--json"]) == EXIT_OK
    return json.dumps(json.loads(capsys.readouterr().out)["adapters"])
