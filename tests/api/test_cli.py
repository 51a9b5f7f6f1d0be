"""The `logmem` CLI, called as `main([...])`: ingest, search, stats, forget and their exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from logmem.api.cli import EXIT_ERROR, EXIT_OK, EXIT_REJECTED, main

REVERSE = "How do I reverse a list in Python?"
SLICE = "Use items[::-1] for a reversed copy, or items.reverse() in place."
GIT = "How do I undo my last git commit but keep the changes?"
GIT_ANSWER = "Run git reset --soft HEAD~1: the commit goes away, the changes stay staged."


def rec(id: str, question: str, answer: str, user: str) -> str:
    return json.dumps({"id": id, "user": user, "messages": [{"role": "user", "content": question},
                                                           {"role": "assistant", "content": answer}],
                       "feedback": [{"turn": 1, "kind": "like"}]})


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs.jsonl"
    path.write_text(rec("a", REVERSE, SLICE, "alice") + "\n" + rec("b", GIT, GIT_ANSWER, "bob") + "\n")
    return path


def test_ingest_search_stats_forget(tmp_path: Path, logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "home")

    code, out, _ = run(capsys, "--home", home, "ingest", str(logs), "--json")
    assert code == EXIT_OK
    report = json.loads(out)
    assert (report["read"], report["stored"], report["experiences"], report["rejected"]) == (2, 2, 2, 0)

    code, out, _ = run(capsys, "--home", home, "search", "reverse a python list", "-k", "1", "--json")
    assert code == EXIT_OK
    (hit,) = json.loads(out)["hits"]
    assert (hit["trigger"], hit["response"], hit["support"], hit["tenant"]) == (REVERSE, SLICE, 1, "default")

    code, out, _ = run(capsys, "--home", home, "stats", "--json")
    assert code == EXIT_OK
    stats = json.loads(out)
    assert (stats["interactions"], stats["experiences"], stats["index"]["default"]["size"]) == (2, 2, 2)

    code, out, _ = run(capsys, "--home", home, "forget", "--user", "alice", "--json")
    assert code == EXIT_OK
    assert json.loads(out) == {"experiences": 1, "interactions": 1}

    code, out, _ = run(capsys, "--home", home, "search", "reverse a python list", "--json")
    assert SLICE not in [h["response"] for h in json.loads(out)["hits"]]
    code, out, _ = run(capsys, "--home", home, "stats")
    assert code == EXIT_OK and "interactions: 1" in out


def test_a_bad_line_exits_3_and_keeps_the_valid_ones(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "home")
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([rec("a", REVERSE, SLICE, "alice"), "{broken",
                               rec("b", GIT, GIT_ANSWER, "bob")]))

    code, out, _ = run(capsys, "--home", home, "ingest", str(path), "--json")

    assert code == EXIT_REJECTED
    report = json.loads(out)
    assert (report["stored"], report["rejected"], report["experiences"]) == (2, 1, 2)
    assert "line 2" in report["errors"][0]
    assert report["rejected_files"] == [str(path) + ".rejected.jsonl"]
    assert json.loads(Path(report["rejected_files"][0]).read_text())["raw"] == "{broken"

    code, out, _ = run(capsys, "--home", home, "stats", "--json")
    assert json.loads(out)["experiences"] == 2


def test_plain_ingest_prints_counts_and_rejections(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(rec("a", REVERSE, SLICE, "alice") + "\n[]\n")

    code, out, err = run(capsys, "--home", str(tmp_path / "home"), "ingest", str(path))

    assert code == EXIT_REJECTED
    assert out.strip() == "read=2 stored=1 skipped=0 rejected=1 experiences=1 merged=0 conflicts=0 filtered=0"
    assert "line 2: expected a JSON object, got list" in err


def test_an_unknown_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"

    code, out, err = run(capsys, "--home", str(tmp_path / "home"), "ingest", str(missing), "--json")

    assert code == EXIT_ERROR
    assert out == "" and f"logmem: {missing}: no such file" in err


def test_a_domain_error_exits_1_with_its_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from logmem.model.embedding import bundled_embedder_path

    home = str(tmp_path / "home")
    assert run(capsys, "--home", home, "stats", "--json")[0] == EXIT_OK  # pins the default embedder

    # the same model from its folder gets the folder's name: the store refuses to mix embedders
    code, _, err = run(capsys, "--home", home, "--embedder", str(bundled_embedder_path()), "stats")

    assert code == EXIT_ERROR
    assert "logmem: this memory was built with embedder='all-MiniLM-L6-v2', not 'model'" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["forget"])

    assert exc.value.code == 2
    assert "one of the arguments --id --user --tenant is required" in capsys.readouterr().err
