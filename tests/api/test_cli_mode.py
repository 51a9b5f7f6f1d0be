"""`logmem mode` and `logmem stats --tenant`: the serving mode and why; an operator pins one and unpins it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from logmem.api.cli import EXIT_OK, EXIT_USAGE, main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_mode_shows_pins_and_unpins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "logs.jsonl"
    logs.write_text("".join(json.dumps({"id": f"r{i}", "messages": [
        {"role": "user", "content": f"Which colour is the {t}?"}, {"role": "assistant", "content": "BLUE"}],
        "feedback": [{"turn": 1, "kind": "like"}]}) + "\n" for i, t in enumerate(["sky", "sea", "lake"])))
    home = str(tmp_path / "home")
    assert run(capsys, "--home", home, "ingest", str(logs), "--json")[0] == EXIT_OK
    code, out = run(capsys, "--home", home, "mode", "--json")
    assert code == EXIT_OK and (json.loads(out)["mode"], json.loads(out)["source"]) == ("auto", "default")
    code, out = run(capsys, "--home", home, "mode", "--pin", "vote")
    assert code == EXIT_OK and out.startswith("default: vote (pinned: pinned by an operator")
    code, out = run(capsys, "--home", home, "stats", "--tenant", "default", "--json")
    assert json.loads(out)["serving_mode"]["mode"] == "vote"
    code, out = run(capsys, "--home", home, "mode", "--unpin", "--json")
    assert json.loads(out)["mode"] == "auto"
    with pytest.raises(SystemExit) as exc:
        main(["--home", home, "mode", "--pin", "sometimes"])
    assert exc.value.code == EXIT_USAGE


def test_mode_shows_each_slice_the_choice_was_made_over(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        embedder: object) -> None:
    from logmem.memory import VectorMemory

    home = tmp_path / "home"
    slices = [{"name": "new", "size": 20, "measured": 20, "weight": 0.6, "served_before": 0.8,
               "figures": {"vote": 0.85, "memory+adapter": 0.8}},
              {"name": "v1", "size": 30, "measured": 30, "weight": 0.4, "served_before": 0.9,
               "figures": {"vote": 0.7, "memory+adapter": 0.9}}]
    with VectorMemory(home, embedder=embedder) as memory:  # what a job leaves: its adapter's metrics, the mode row
        version = memory.store.add_adapter(tenant="default", base_model="tiny", method="sft", seed=0,
                                           status="promoted", metrics={"serving": {"slices": slices}}, covered=[],
                                           path="unused")
        memory.activate_adapter(version, tenant="default")
        memory.record_serving_mode(tenant="default", mode="memory+adapter", adapter=version, metric="accuracy",
                                   figures={"vote": 0.79, "memory+adapter": 0.84}, reason="best combined",
                                   job_version=version)
    code, out = run(capsys, "--home", str(home), "mode")
    assert code == EXIT_OK and out.startswith(f"default: memory+adapter with adapter {version} (measured")
    assert "slice v1 (30 of 30 measured, weight 0.40): vote 0.7000, memory+adapter 0.9000" in out
    code, out = run(capsys, "--home", str(home), "stats", "--tenant", "default", "--json")
    assert json.loads(out)["serving_mode"]["slices"] == slices  # the service's stats carry them too
