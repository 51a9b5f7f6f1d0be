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
