"""The log schema and its importers: native, OpenAI-style and MemoryBench records; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from logmem.memory import Feedback, Interaction, LogFormatError, Message, Rejected, parse_record, read_jsonl
from logmem.memory.logs import detect_format, write_rejected

CHAT = [{"role": "user", "content": "How do I reverse a list?"},
        {"role": "assistant", "content": "Use items[::-1]."}]


def native(**extra: object) -> dict:
    return {"messages": CHAT, **extra}


# --- native ------------------------------------------------------------------------------------

def test_native_record_reads_every_field() -> None:
    obj = native(id="r1", tenant="acme", user="u1", session="s1", timestamp="2025-01-02T03:04:05Z",
                 feedback=[{"turn": 1, "kind": "rating", "value": 4, "text": "fine"}], metadata={"app": "x"})

    it = parse_record(obj)

    assert it == Interaction(
        id="r1", tenant="acme", user="u1", session="s1", timestamp=1735787045.0,
        messages=(Message("user", "How do I reverse a list?"), Message("assistant", "Use items[::-1].")),
        feedback=(Feedback(turn=1, kind="rating", value=4.0, text="fine"),), metadata={"app": "x"})


@pytest.mark.parametrize(("raw", "epoch"), [
    (1700000000, 1700000000.0),
    (1700000000.5, 1700000000.5),
    ("2023-11-14T22:13:20+00:00", 1700000000.0),
    ("2023-11-14T23:13:20+01:00", 1700000000.0),
    ("2023-11-14T22:13:20", 1700000000.0),  # naive times are UTC
    (None, None),
])
def test_timestamps(raw: object, epoch: float | None) -> None:
    assert parse_record(native(timestamp=raw)).timestamp == epoch


def test_defaults_and_tenant_override() -> None:
    it = parse_record(native(tenant="acme"))

    assert (it.tenant, it.user, it.session, it.feedback, it.metadata) == ("acme", None, None, (), {})
    assert parse_record(native()).tenant == "default"
    assert parse_record(native(tenant="acme"), tenant="globex").tenant == "globex"


def test_numeric_ids_become_text() -> None:
    assert parse_record(native(id=17, user=4)).id == "17"
    assert parse_record(native(id=17, user=4)).user == "4"


def test_content_id_is_stable_and_depends_on_content() -> None:
    a = parse_record(native(user="u1"))
    reordered = parse_record({"user": "u1", "messages": [dict(reversed(list(m.items()))) for m in CHAT]})
    other = parse_record(native(user="u2"))

    assert a.id == parse_record(native(user="u1")).id == reordered.id
    assert len(a.id) == 24
    assert other.id != a.id


def test_native_round_trip_through_to_json() -> None:
    it = parse_record(native(id="r1", user="u", timestamp=5, feedback=[{"turn": 1, "kind": "like"}]))

    assert parse_record(json.loads(json.dumps(it.to_json()))) == it


def test_an_interaction_passes_through() -> None:
    it = parse_record(native(id="r1"))

    assert parse_record(it) is it


# --- OpenAI ------------------------------------------------------------------------------------

def test_openai_request_and_response() -> None:
    obj = {"id": "chatcmpl-1", "created": 1700000000, "model": "gpt-x", "user": "u9",
           "messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                                     {"type": "text", "text": "there"}]}],
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}}]}

    it = parse_record(obj)

    assert detect_format(obj) == "openai"
    assert it.id == "chatcmpl-1" and it.user == "u9" and it.timestamp == 1700000000.0
    assert it.messages == (Message("system", "Be brief."), Message("user", "Hi there"),
                           Message("assistant", "Hello."))
    assert it.metadata == {"model": "gpt-x"} and it.feedback == ()


def test_openai_without_a_response_has_nothing_to_learn() -> None:
    with pytest.raises(LogFormatError, match="field 'messages': no assistant message"):
        parse_record({"messages": CHAT[:1], "choices": []}, format="openai")


# --- MemoryBench ---------------------------------------------------------------------------------

def memorybench_item(**extra: object) -> dict:
    return {"dataset_name": "mb", "test_idx": 7,
            "dialog": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                       {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}], **extra}


def test_memorybench_rounds_actions_and_satisfaction() -> None:
    obj = memorybench_item(implicit_feedback=[
        {"round": 2, "implicit_actions": ["like", "copy", "scroll"], "satisfaction_score": 10},
        {"round": 1, "implicit_actions": ["regenerate"], "satisfaction_score": 0},
    ])

    it = parse_record(obj)

    assert detect_format(obj) == "memorybench"
    assert it.id == "mb-7" and it.metadata == {"dataset_name": "mb"}
    assert [m.content for m in it.messages] == ["q1", "a1", "q2", "a2"]
    # round r is the r-th assistant message; unknown actions are ignored; 0-10 maps onto 1-5
    assert it.feedback == (Feedback(3, "like"), Feedback(3, "copy"), Feedback(3, "rating", 5.0),
                           Feedback(1, "regenerate"), Feedback(1, "rating", 1.0))


def test_memorybench_round_defaults_to_position_and_scores_scale_linearly() -> None:
    it = parse_record(memorybench_item(implicit_feedback=[{"satisfaction_score": 5},
                                                          {"satisfaction_score": 7.5}]))

    assert it.feedback == (Feedback(1, "rating", 3.0), Feedback(3, "rating", 4.0))


def test_memorybench_without_an_index_gets_a_content_id() -> None:
    obj = memorybench_item()
    del obj["test_idx"]

    assert parse_record(obj).id == parse_record(dict(obj)).id != "mb-None"


@pytest.mark.parametrize("rnd", [0, 3, "1", True])
def test_memorybench_round_must_name_an_assistant_message(rnd: object) -> None:
    with pytest.raises(LogFormatError, match=r"field 'implicit_feedback\[0\]\.round': round .* names no"):
        parse_record(memorybench_item(implicit_feedback=[{"round": rnd}]))


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("obj", "pattern"), [
    ({"user": "u"}, r"field 'messages': expected a non-empty list of messages"),
    (native(messages=[]), r"field 'messages': expected a non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, r"field 'messages\[0\]\.role': role must be one of"),
    ({"messages": ["hi"]}, r"field 'messages\[0\]': expected an object, got str"),
    ({"messages": [{"role": "user", "content": 3}, CHAT[1]]}, r"field 'messages\[0\]\.content': expected"),
    ({"messages": CHAT[:1]}, r"field 'messages': no assistant message"),
    (native(feedback=[{"turn": 0, "kind": "like"}]), r"field 'feedback\[0\]\.turn': turn 0 is not the"),
    (native(feedback=[{"turn": 9, "kind": "like"}]), r"field 'feedback\[0\]\.turn': turn 9"),
    (native(feedback=[{"turn": "1", "kind": "like"}]), r"field 'feedback\[0\]\.turn': expected an integer"),
    (native(feedback=[{"turn": 1, "kind": "love"}]), r"field 'feedback\[0\]\.kind': kind must be one of"),
    (native(feedback=[{"turn": 1, "kind": "rating"}]), r"field 'feedback\[0\]\.value': a rating needs"),
    (native(feedback=[{"turn": 1, "kind": "like", "value": "5"}]), r"field 'feedback\[0\]\.value'"),
    (native(feedback={"turn": 1}), r"field 'feedback': expected a list, got dict"),
    (native(timestamp="yesterday"), r"field 'timestamp': not an ISO-8601 date: 'yesterday'"),
    (native(timestamp=True), r"field 'timestamp': expected ISO-8601"),
    (native(timestamp=float("nan")), r"field 'timestamp': expected a finite number"),
    (native(timestamp=[1]), r"field 'timestamp': expected ISO-8601 text or epoch seconds, got list"),
    (native(user={"name": "x"}), r"field 'user': expected text, got dict"),
    (native(metadata=[1]), r"field 'metadata': expected an object, got list"),
    (native(metadata={"retrieved": "3"}), r"field 'metadata\.retrieved': expected a list of experience ids"),
    (native(metadata={"retrieved": [1, True]}), r"field 'metadata\.retrieved': expected a list of experience ids"),
    ([1, 2], r"^expected a JSON object, got list$"),
    ("text", r"^expected a JSON object, got str$"),
])
def test_bad_records_are_rejected_naming_the_field(obj: object, pattern: str) -> None:
    with pytest.raises(LogFormatError, match=pattern):
        parse_record(obj)


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(LogFormatError, match="unknown format 'xml'"):
        parse_record(native(), format="xml")


def test_read_jsonl_names_file_line_and_field(tmp_path: Path) -> None:
    good = json.dumps(native(id="ok"))
    lines = [
        good,
        "",  # blank lines are skipped but still counted
        '{"messages": [',
        json.dumps({"user": "u"}),
        json.dumps({"messages": [{"role": "bot", "content": "x"}]}),
        json.dumps(native(feedback=[{"turn": 0, "kind": "like"}])),
        json.dumps(native(timestamp="not a date")),
        "[1, 2]",
        json.dumps(native(id="ok2")),
    ]
    path = tmp_path / "logs.jsonl"
    path.write_text("\n".join(lines) + "\n")

    out = list(read_jsonl(path))

    assert [o.id for o in out if isinstance(o, Interaction)] == ["ok", "ok2"]
    bad = [o for o in out if isinstance(o, Rejected)]
    assert [(r.error.line, r.error.field) for r in bad] == [
        (3, None), (4, "messages"), (5, "messages[0].role"), (6, "feedback[0].turn"), (7, "timestamp"),
        (8, None)]
    assert all(r.error.source == str(path) for r in bad)
    assert [r.raw.rstrip("\n") for r in bad] == lines[2:8]
    assert "invalid JSON" in bad[0].error.reason
    assert str(bad[3].error) == (f"{path}, line 6, field 'feedback[0].turn': "
                                 "turn 0 is not the index of an assistant message")
    assert bad[5].error.describe() == f"{path}, line 8: expected a JSON object, got list"


def test_read_jsonl_applies_format_and_tenant(tmp_path: Path) -> None:
    path = tmp_path / "mb.jsonl"
    path.write_text(json.dumps(memorybench_item()) + "\n")

    (it,) = read_jsonl(path, format="memorybench", tenant="t1")

    assert isinstance(it, Interaction) and it.tenant == "t1" and it.id == "mb-7"


def test_write_rejected_keeps_line_field_and_raw_text(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(native(id="a")) + "\n" + '{"oops"\n')
    rejected = [r for r in read_jsonl(src) if isinstance(r, Rejected)]
    side = tmp_path / "side.jsonl"

    assert write_rejected(rejected, side) == 1

    (row,) = [json.loads(line) for line in side.read_text().splitlines()]
    assert row == {"source": str(src), "line": 2, "field": None, "error": rejected[0].error.reason,
                   "raw": '{"oops"'}
