"""The model-side CLI on the real bundled model: generate, chat with feedback, eval, consolidate."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from logmem.api.cli import main
from logmem.model.config import ConsolidationConfig

pytestmark = pytest.mark.slow

LOGS = [
    {"id": f"l{i}", "user": f"u{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
     "feedback": [{"turn": 1, "kind": "like"}]}
    for i, (q, a) in enumerate([
        ("What is the launch code of project Zephyr?", "The launch code of project Zephyr is 7421."),
        ("Which port does the staging database use?", "The staging database listens on port 6543."),
        ("Who maintains the billing service?", "The billing service is maintained by the Otter team."),
        ("Which colour is the sky?", "BLUE"), ("Which colour is the sea?", "BLUE"),
    ])
]


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    logs = tmp_path / "logs.jsonl"
    logs.write_text("".join(json.dumps(r) + "\n" for r in LOGS))
    return tmp_path


def _cli(home: Path, smollm_folder: Path, *args: str) -> list[str]:
    return ["--home", str(home / "h"), "--model", str(smollm_folder), *args]


def test_generate_uses_the_memory(home: Path, smollm_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cli(home, smollm_folder, "ingest", str(home / "logs.jsonl"), "--json")) == 0
    capsys.readouterr()
    assert main(_cli(home, smollm_folder, "generate", "What's the launch code for project Zephyr?",
                     "--max-new-tokens", "24", "--json")) == 0
    reply = json.loads(capsys.readouterr().out)
    assert "7421" in reply["text"]
    assert reply["experiences"] and reply["memory_tokens"] > 0


def test_chat_feedback_flows_into_the_memory(home: Path, smollm_folder: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("What do cats like to eat?\n/fix Cats like fish.\n/quit\n"))
    assert main(_cli(home, smollm_folder, "chat", "--max-new-tokens", "8")) == 0
    out = capsys.readouterr().out
    assert "[feedback recorded: 0 experience(s) credited, 1 stored]" in out
    assert main(_cli(home, smollm_folder, "search", "what food do cats like", "--json")) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["response"] == "Cats like fish." and hits[0]["rejected"]


def test_eval_reports_each_mode(home: Path, smollm_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = home / "eval.jsonl"
    items.write_text(json.dumps({"id": "q1", "messages": [{"role": "user", "content": "Which colour is the ocean?"}],
                                 "reference": ["BLUE"]}) + "\n")
    preds = home / "preds.jsonl"
    assert main(_cli(home, smollm_folder, "eval", "--logs", str(home / "logs.jsonl"), "--eval", str(items),
                     "--modes", "knn,vote", "--predictions", str(preds), "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in data["results"]] == ["knn", "vote"]
    assert data["results"][0]["accuracy"] == 1.0  # the two nearest liked answers say BLUE
    assert len(preds.read_text().splitlines()) == 2
    assert main(_cli(home, smollm_folder, "eval", "--logs", str(home / "logs.jsonl"), "--eval", str(items),
                     "--modes", "nope")) == 2


def test_consolidate_runs_a_job_and_registers_an_adapter(home: Path, smollm_folder: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cli(home, smollm_folder, "ingest", str(home / "logs.jsonl"), "--json")) == 0
    capsys.readouterr()
    code = main(_cli(home, smollm_folder, "consolidate", "--max-steps", "1", "--lr", "1e-4", "--patience", "1",
                     "--max-seconds", "900", "--json"))
    job = json.loads(capsys.readouterr().out)
    assert job["params"]["lr"] == 1e-4 and job["params"]["max_steps"] == 1
    assert (job["params"]["patience"], job["params"]["max_seconds"]) == (1, 900.0)
    assert job["params"]["eval_every"] == ConsolidationConfig.eval_every  # --help's default is the config's
    assert (job["metrics"]["steps"], job["metrics"]["steps_planned"], job["metrics"]["stop"]) == (1, 1, "max_steps")
    assert job["status"] in ("succeeded", "rejected") and code == (0 if job["status"] == "succeeded" else 3)
    assert main(_cli(home, smollm_folder, "adapters", "--json")) == 0
    (adapter,) = json.loads(capsys.readouterr().out)["adapters"]
    assert adapter["status"] == ("promoted" if job["status"] == "succeeded" else "rejected")
    assert main(_cli(home, smollm_folder, "jobs", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["jobs"][0]["status"] == job["status"]
    assert main(_cli(home, smollm_folder, "jobs")) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert "steps" in header and "stopped by" in header and " 1/1 max_steps " in row
