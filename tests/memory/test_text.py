"""The text boundary (memory/text.py) and the log parser and file ingest through it: identifiers refused, free text
and metadata cleaned, nesting limited, feedback values checked once."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from logmem.memory import VectorMemory
from logmem.memory.errors import LogFormatError
from logmem.memory.logs import Feedback, Rejected, parse_record, read_jsonl
from logmem.memory.text import MAX_DEPTH, check_identifier, clean_json, clean_text, require_text

SURROGATE, NUL = "\ud800", "\x00"


def nested(depth: int) -> Any:
    """A JSON value `depth` containers deep: [[...[1]...]]."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def record(**fields: Any) -> dict[str, Any]:
    return {"id": "r1", "user": "u", "session": "s",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], **fields}


# --- the pure functions ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["abc", "user@example.com", "ü-名前-🙂", "a b", ""])
def test_an_identifier_without_controls_or_surrogates_passes_unchanged(value: str) -> None:
    assert check_identifier(value, field="user") == value


@pytest.mark.parametrize(("value", "what"), [
    ("a\x00b", r"control character \(U\+0000\) at position 1"),
    ("ab\x1f", r"control character \(U\+001F\) at position 2"),
    ("\x7f", r"control character \(U\+007F\)"),
    ("x\x85", r"control character \(U\+0085\)"),
    ("tab\there", r"control character \(U\+0009\)"),
    ("line\n", r"control character \(U\+000A\)"),
    (f"a{SURROGATE}", r"lone surrogate \(U\+D800\) at position 1"),
    ("\udfff", r"lone surrogate \(U\+DFFF\)"),
])
def test_an_identifier_with_a_control_or_surrogate_is_refused_naming_the_field(value: str, what: str) -> None:
    with pytest.raises(LogFormatError, match=rf"^field 'session': holds a {what}"):
        check_identifier(value, field="session")


@pytest.mark.parametrize(("value", "cleaned"), [
    ("plain text", "plain text"),
    ("keeps\ttabs\nnewlines\r\nand returns", "keeps\ttabs\nnewlines\r\nand returns"),
    (f"a{NUL}b", "ab"),
    ("\x01\x02bell\x07\x0b\x0c\x1b[0m", "bell[0m"),
    (f"lone {SURROGATE} and \udc00", "lone \ufffd and \ufffd"),
    ("emoji 🙂 and 名前 stay", "emoji 🙂 and 名前 stay"),
    ("\x7f and \x85 are kept (storable, tokenizable)", "\x7f and \x85 are kept (storable, tokenizable)"),
])
def test_free_text_is_cleaned(value: str, cleaned: str) -> None:
    assert clean_text(value) == cleaned
    assert clean_text(cleaned) == cleaned  # idempotent
    cleaned.encode("utf-8")  # what stores and tokenizers need


def test_required_text_empty_once_cleaned_is_refused() -> None:
    assert require_text(f"sk{NUL}y", field="text") == "sky"
    with pytest.raises(LogFormatError, match=r"^field 'text': empty once control characters are removed"):
        require_text(f"{NUL}\x01", field="text")


def test_json_keys_and_strings_are_cleaned_numbers_and_structure_kept() -> None:
    value = {f"k{NUL}": [f"v{NUL}", SURROGATE, 1, 2.5, True, None, {"in": f"\x01deep{NUL}"}]}

    assert clean_json(value, field="metadata") == {"k": ["v", "\ufffd", 1, 2.5, True, None, {"in": "deep"}]}


def test_json_nesting_is_limited_naming_the_field() -> None:
    assert clean_json(nested(MAX_DEPTH), field="metadata") == nested(MAX_DEPTH)
    with pytest.raises(LogFormatError, match=rf"^field 'metadata': nested deeper than {MAX_DEPTH} levels"):
        clean_json(nested(MAX_DEPTH + 1), field="metadata")
    with pytest.raises(LogFormatError, match="nested deeper"):
        clean_json(nested(500), field="metadata")


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_json_non_finite_numbers_are_refused(number: float) -> None:
    with pytest.raises(LogFormatError, match=r"^field 'metadata': holds .*expected a finite number"):
        clean_json({"score": [number]}, field="metadata")


# --- the parser through it -------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["id", "user", "session", "tenant"])
@pytest.mark.parametrize("bad", [NUL, SURROGATE, "\x1b"])
def test_parser_refuses_identifiers_naming_the_field(field: str, bad: str) -> None:
    with pytest.raises(LogFormatError, match=rf"^field '{field}': holds a "):
        parse_record(record(**{field: f"x{bad}y"}))


def test_parser_refuses_a_tenant_argument_it_cannot_store() -> None:
    with pytest.raises(LogFormatError, match=r"^field 'tenant': holds a control"):
        parse_record(record(), tenant=f"acme{NUL}")


def test_parser_refuses_a_memorybench_id_it_cannot_store() -> None:
    item = {"dataset_name": f"mb{NUL}", "test_idx": 1,
            "dialog": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(LogFormatError, match=r"^field 'id': holds a control"):
        parse_record(item)


def test_parser_cleans_free_text_and_metadata() -> None:
    it = parse_record(record(
        messages=[{"role": "user", "content": f"q{NUL}{SURROGATE}"},
                  {"role": "assistant", "content": [{"type": "text", "text": "a\x01"}, {"text": 5}]}],
        feedback=[{"turn": 1, "kind": "correction", "text": f"right{NUL}"}],
        metadata={f"app{NUL}": f"x{SURROGATE}"}))

    assert [m.content for m in it.messages] == ["q\ufffd", "a"]
    assert it.feedback == (Feedback(1, "correction", None, "right"),)
    assert it.metadata == {"app": "x\ufffd"}
    json.dumps(it.to_json(), ensure_ascii=False).encode("utf-8")


def test_parser_refuses_metadata_too_deep_or_not_finite() -> None:
    with pytest.raises(LogFormatError, match=r"^field 'metadata': nested deeper than"):
        parse_record(record(metadata={"deep": nested(500)}))
    with pytest.raises(LogFormatError, match=r"^field 'metadata': holds nan"):
        parse_record(record(metadata={"x": math.nan}))
    with pytest.raises(LogFormatError, match=r"^field 'metadata\.retrieved'"):
        parse_record(record(metadata={"retrieved": [2**70]}))


@pytest.mark.parametrize("value", [99, 0, 0.5, 5.01, -1, math.inf, -math.inf, math.nan])
def test_parser_refuses_a_rating_off_the_scale(value: float) -> None:
    with pytest.raises(LogFormatError, match=r"^field 'feedback\[0\]\.value': expected a finite number from 1 to 5"):
        parse_record(record(feedback=[{"turn": 1, "kind": "rating", "value": value}]))


@pytest.mark.parametrize("value", [1, 3.5, 5])
def test_parser_takes_a_rating_on_the_scale(value: float) -> None:
    assert parse_record(record(feedback=[{"turn": 1, "kind": "rating", "value": value}])).feedback[0].value == value


@pytest.mark.parametrize("score", [11, -1, math.inf, math.nan])
def test_parser_refuses_a_memorybench_satisfaction_off_its_scale(score: float) -> None:
    item = {"dataset_name": "mb", "test_idx": 1, "implicit_feedback": [{"satisfaction_score": score}],
            "dialog": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(LogFormatError, match=r"^field 'implicit_feedback\[0\]\.satisfaction_score'"):
        parse_record(item)


def test_parser_refuses_feedback_text_too_long_or_not_text() -> None:
    with pytest.raises(LogFormatError, match=r"^field 'feedback\[0\]\.text': longer than 20000"):
        parse_record(record(feedback=[{"turn": 1, "kind": "correction", "text": "x" * 20_001}]))
    with pytest.raises(LogFormatError, match=r"^field 'feedback\[0\]\.text': expected text"):
        parse_record(record(feedback=[{"turn": 1, "kind": "like", "text": 3}]))


# --- ingest from a file: the bad lines refused with file:line:field, the good ones stored ------------

@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """None (the home's SQLite file), or the URL of a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_db"))


def test_file_ingest_refuses_bad_lines_and_stores_the_good_ones(tmp_path: Path, embedder: Any,
                                                                db_url: str | None) -> None:
    good = [record(id=f"good{i}", feedback=[{"turn": 1, "kind": "like"}],
                   messages=[{"role": "user", "content": f"question {i}{NUL}"},
                             {"role": "assistant", "content": f"answer {i} {SURROGATE}"}]) for i in range(3)]
    bad = [
        (record(id=f"bad{NUL}"), "id"),
        (record(id=f"bad{SURROGATE}"), "id"),
        (record(id="bad-user", user="\x1b[31m"), "user"),
        (record(id="deep", metadata={"x": nested(500)}), "metadata"),
        (record(id="r99", feedback=[{"turn": 1, "kind": "rating", "value": 99}]), "feedback[0].value"),
        (record(id="inf", feedback=[{"turn": 1, "kind": "rating", "value": math.inf}]), "feedback[0].value"),
    ]
    lines = [json.dumps(r) for r in [good[0], *(r for r, _ in bad[:2]), good[1], *(r for r, _ in bad[2:])]]
    lines += ["[" * 100_000 + "]" * 100_000, '{"id": ' + "9" * 5000 + "}", json.dumps(good[2])]
    path = tmp_path / "logs.jsonl"
    # json.dumps writes the infinite rating as `Infinity`, which Python's JSON reader (and so the parser) takes in
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    assert "Infinity" in path.read_text()

    read = list(read_jsonl(path))
    refused = [(r.error.line, r.error.field) for r in read if isinstance(r, Rejected)]
    assert refused == [(2, "id"), (3, "id"), (5, "user"), (6, "metadata"), (7, "feedback[0].value"),
                       (8, "feedback[0].value"), (9, None), (10, None)]
    assert [r.error.reason for r in read if isinstance(r, Rejected)][-2] == "invalid JSON: nested too deep to read"
    assert all(str(path) in r.error.describe() for r in read if isinstance(r, Rejected))

    memory = VectorMemory(tmp_path / "home", embedder=embedder, db_url=db_url)
    try:
        report = memory.ingest_file(path)
        assert (report.read, report.stored, report.rejected) == (11, 3, 8)
        assert memory.stats().interactions == 3
        assert memory.search("question 1", k=1)[0].response == "answer 1 \ufffd"
        assert memory.ingest_file(path).stored == 0  # the cleaned records are known again: ids unchanged
    finally:
        memory.close()
    side = [json.loads(line) for line in (tmp_path / "logs.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [(s["line"], s["field"]) for s in side] == refused


def test_a_stored_row_of_an_older_version_is_skipped_with_a_warning_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    from logmem.memory.logs import stored_record

    ok = {"id": "r1", "tenant": "t", "messages": [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "a"}],
          "feedback": [{"turn": 1, "kind": "rating", "value": 5}]}
    assert stored_record(ok) is not None
    old = {**ok, "id": "r2", "feedback": [{"turn": 1, "kind": "rating", "value": 99}]}  # stored before the check
    with caplog.at_level("WARNING", logger="logmem.memory.logs"):
        assert stored_record(old) is None
    assert "r2" in caplog.text and "value" in caplog.text
