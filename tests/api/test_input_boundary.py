"""The text boundary over HTTP, on SQLite and on PostgreSQL alike: text that cannot be stored or tokenized is cleaned
(free text) or refused with a 4xx naming the field (identifiers), never a 500; a batch is per record; a rating is
a finite number in 1..5 on the route as at ingest."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from logmem.api.app import create_app
from logmem.memory.text import MAX_DEPTH

SURROGATE, NUL = "\ud800", "\x00"
SKY = "What colour is the sky on Mars at noon?"
PORT = "Which port does Redis use by default?"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def client(request: pytest.FixtureRequest, tmp_path: Path, runtime_for: Callable[..., Any]) -> Iterator[TestClient]:
    """A client of tenant acme over the service on SQLite, or on a fresh PostgreSQL database."""
    db = {} if request.param == "sqlite" else {"db": request.getfixturevalue("pg_db")}
    runtime = runtime_for(tmp_path / "home", **db)
    key, _ = runtime.store.create_key(tenant="acme")
    with TestClient(create_app(runtime=runtime), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


def liked(question: str, answer: str, **fields: Any) -> dict[str, Any]:
    return {"id": f"id:{question}", "user": "u0", "feedback": [{"turn": 1, "kind": "like"}],
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **fields}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def post(client: TestClient, url: str, body: Any) -> Any:
    """POST `body` as JSON with its lone surrogates escaped (`\\ud800`, legal JSON), as a hostile client sends them:
    the client's own `json=` would refuse to encode them."""
    return client.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"})


def refused(r: Any, status: int, param: str) -> dict[str, Any]:
    """Asserts `r` is a JSON error in OpenAI's shape naming `param`; returns its error object."""
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["param"] == param and param.split(".")[-1] in error["message"], error
    return error


def answers(client: TestClient, text: str) -> list[str]:
    r = client.get("/v1/memory/find", params={"text": text})
    assert r.status_code == 200, r.text
    return [e["response"] for e in r.json()["data"]]


# --- a batch is per record -----------------------------------------------------------------------------
def test_a_batch_stores_its_valid_records_and_names_each_bad_one(client: TestClient) -> None:
    records = [
        liked(SKY, "Butterscotch"),
        liked("bad id", "x", id=f"a{SURROGATE}b"),
        liked("nul id", "x", id=f"a{NUL}b"),
        liked("bad user", "x", user=f"u{NUL}"),
        liked("bad session", "x", session="s\x1b"),
        liked("too deep", "x", metadata={"tree": nested(500)}),
        liked("rated 99", "x", feedback=[{"turn": 1, "kind": "rating", "value": 99}]),
        liked(f"cleaned {SURROGATE} question{NUL}", f"cleaned answer{NUL} {SURROGATE}", id="cleaned",
              metadata={f"k{NUL}": f"v{NUL}{SURROGATE}", "depth": nested(MAX_DEPTH - 2)}),
        liked(PORT, "6379"),
    ]
    r = post(client, "/v1/interactions", {"records": records})

    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["read"], report["stored"], report["rejected"]) == (9, 3, 6)
    fields = {e["index"]: e["error"] for e in report["rejected_records"]}
    assert sorted(fields) == [1, 2, 3, 4, 5, 6]
    for index, field in [(1, "'id'"), (2, "'id'"), (3, "'user'"), (4, "'session'"), (5, "'metadata'"),
                         (6, "'feedback[0].value'")]:
        assert f"records[{index}]" in fields[index] and f"field {field}" in fields[index], fields[index]
    assert report["rejected_records"][0]["record"]["id"] == "a\ufffdb"  # echoed back as JSON can carry it
    assert answers(client, "Butterscotch") == ["Butterscotch"] and answers(client, "6379") == ["6379"]
    assert answers(client, "cleaned answer") == ["cleaned answer \ufffd"]
    assert client.get("/v1/memory/stats").json()["interactions"] == 3


def test_a_batch_of_only_bad_records_is_a_report_not_a_failure(client: TestClient) -> None:
    r = post(client, "/v1/interactions", {"records": [liked("a", "b", id=NUL), {"messages": "nope"}]})

    assert r.status_code == 200, r.text
    assert (r.json()["stored"], r.json()["rejected"]) == (0, 2)


def test_records_too_deep_to_echo_are_still_reported_and_the_good_ones_stored(client: TestClient) -> None:
    deep_object: Any = 1
    for _ in range(500):
        deep_object = {"a": deep_object}
    records = [nested(500), deep_object, liked("deep", "x", metadata={"x": nested(900)}), liked(SKY, "Butterscotch")]
    r = post(client, "/v1/interactions", {"records": records})

    assert r.status_code == 200, r.text  # was a 422 (the echo of a deep record failed) with the good one stored
    report = r.json()
    assert (report["stored"], report["rejected"]) == (1, 3)
    assert [(e["index"], e["record"]) for e in report["rejected_records"]] == [(0, None), (1, None), (2, None)]
    assert "field 'metadata': nested deeper" in report["rejected_records"][2]["error"]
    assert answers(client, "Butterscotch") == ["Butterscotch"]


# --- chat: messages cleaned, the user refused --------------------------------------------------------------
def test_chat_cleans_message_text_and_logs_it(client: TestClient) -> None:
    r = post(client, "/v1/chat/completions", {
        "model": "default", "max_tokens": 2, "stop": [f"{NUL}."],
        "messages": [{"role": "system", "content": f"be brief{NUL}"},
                     {"role": "user", "content": [{"type": "text", "text": f"sky {SURROGATE}{NUL}?"}]}]})

    assert r.status_code == 200, r.text
    logged = client.get(f"/v1/interactions/{r.json()['id']}").json()
    assert [m["content"] for m in logged["messages"][:2]] == ["be brief", "sky \ufffd?"]


def test_chat_refuses_a_user_it_cannot_store(client: TestClient) -> None:
    for user in (f"u{NUL}", f"u{SURROGATE}", "u\n"):
        r = post(client, "/v1/chat/completions", {"model": "default", "user": user, "max_tokens": 2,
                                                      "messages": [{"role": "user", "content": SKY}]})
        refused(r, 422, "user")


def test_chat_refuses_stop_strings_empty_once_cleaned(client: TestClient) -> None:
    r = post(client, "/v1/chat/completions", {"model": "default", "stop": [NUL], "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": SKY}]})
    refused(r, 422, "stop")


# --- feedback: ids refused, text cleaned, ratings in 1..5 ------------------------------------------------
@pytest.fixture
def answered(client: TestClient) -> str:
    r = post(client, "/v1/chat/completions", {"model": "default", "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": SKY}]})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize("value", ["99", "0", "5.5", "-1", "Infinity", "-Infinity", "NaN", '"4"', "true"])
def test_feedback_refuses_a_rating_off_the_scale(client: TestClient, answered: str, value: str) -> None:
    # raw JSON: Python's reader (Starlette's) takes Infinity and NaN in, which json= could not send
    r = client.post(f"/v1/interactions/{answered}/feedback", content=f'{{"kind": "rating", "value": {value}}}',
                    headers={"Content-Type": "application/json"})
    refused(r, 422, "value")
    assert client.get(f"/v1/interactions/{answered}").json()["feedback"] == []


def test_feedback_takes_a_rating_on_the_scale_and_needs_one(client: TestClient, answered: str) -> None:
    refused(post(client, f"/v1/interactions/{answered}/feedback", {"kind": "rating"}), 422, "value")
    r = post(client, f"/v1/interactions/{answered}/feedback", {"kind": "rating", "value": 4.5})
    assert r.status_code == 200, r.text
    assert client.get(f"/v1/interactions/{answered}").json()["feedback"][0]["value"] == 4.5


def test_feedback_cleans_a_correction_and_refuses_an_event_id(client: TestClient, answered: str) -> None:
    url = f"/v1/interactions/{answered}/feedback"
    refused(post(client, url, {"kind": "like", "event_id": f"e{NUL}"}), 422, "event_id")
    refused(post(client, url, {"kind": "correction", "text": NUL}), 422, "body")  # nothing left to learn

    r = post(client, url, {"kind": "correction", "text": f"Butterscotch{NUL} {SURROGATE}"})
    assert r.status_code == 200, r.text
    assert client.get(url.removesuffix("/feedback")).json()["feedback"][0]["text"] == "Butterscotch \ufffd"
    assert answers(client, "Butterscotch") == ["Butterscotch \ufffd"]


# --- path ids and queries -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [NUL, "\x1b", "\x7f"])
def test_path_ids_it_cannot_store_are_a_4xx_naming_the_field(client: TestClient, bad: str) -> None:
    part = quote(f"x{bad}y")
    refused(client.get(f"/v1/interactions/{part}"), 422, "path.interaction_id")
    refused(post(client, f"/v1/interactions/{part}/feedback", {"kind": "like"}), 422, "path.interaction_id")
    refused(client.delete(f"/v1/memory/users/{part}"), 422, "path.user")


def test_a_path_id_that_is_not_utf8_is_no_500(client: TestClient) -> None:
    for path in ("/v1/interactions/%ED%A0%80", "/v1/interactions/%ff"):
        assert client.get(path).status_code in (404, 422)
    assert client.delete("/v1/memory/users/%ED%A0%80").status_code in (200, 422)


def test_find_matches_the_cleaned_text_and_refuses_nothing_left(client: TestClient) -> None:
    r = post(client, "/v1/interactions", {"records": [liked(SKY, "Butterscotch"), liked(PORT, "6379")]})
    assert r.status_code == 200 and r.json()["stored"] == 2

    assert answers(client, f"Butter{NUL}scotch") == ["Butterscotch"]
    assert client.get("/v1/memory/find?text=6379%ED%A0%80").status_code == 200  # not UTF-8: read as U+FFFD
    for nothing in (NUL, "\x01\x02"):
        refused(client.get("/v1/memory/find", params={"text": nothing}), 422, "query.text")
        refused(client.get("/v1/memory/search", params={"q": nothing}), 422, "query.q")
        refused(client.get("/v1/memory/prompt", params={"q": nothing}), 422, "query.q")
    r = client.get("/v1/memory/search", params={"q": f"Redis {NUL}port", "k": 1})
    assert r.status_code == 200 and [h["response"] for h in r.json()["hits"]] == ["6379"]


def test_baseline_refuses_a_question_empty_once_cleaned(client: TestClient) -> None:
    refused(post(client, "/v1/memory/baseline", {"q": f"{NUL}"}), 422, "q")


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_record_timestamps_out_of_range_are_refused_not_a_500(client: TestClient, value: float) -> None:
    body = '{"records": [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],' \
           f' "timestamp": {"Infinity" if value > 0 else "-Infinity"}}}]}}'
    r = client.post("/v1/interactions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["rejected"] == 1 and "field 'timestamp'" in r.json()["rejected_records"][0]["error"]


# --- the CLI: `logmem ingest` through the same parser --------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_args(request: pytest.FixtureRequest) -> list[str]:
    return [] if request.param == "sqlite" else ["--db", str(request.getfixturevalue("pg_db"))]


def test_cli_ingest_refuses_bad_ratings_and_ids_and_stores_the_rest(tmp_path: Path, db_args: list[str],
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from logmem.api.cli import EXIT_REJECTED, main

    lines = [liked(SKY, f"Butterscotch{NUL}"),
             liked("rated 99", "x", feedback=[{"turn": 1, "kind": "rating", "value": 99}]),
             liked("rated infinity", "x", feedback=[{"turn": 1, "kind": "rating", "value": math.inf}]),
             liked("nul id", "x", id=f"a{NUL}"),
             liked(PORT, "6379", feedback=[{"turn": 1, "kind": "rating", "value": 5}])]
    path = tmp_path / "logs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    home = ["--home", str(tmp_path / "home"), *db_args]

    code = main([*home, "ingest", str(path), "--json"])
    out, err = capsys.readouterr()

    assert code == EXIT_REJECTED
    report = json.loads(out)
    assert (report["read"], report["stored"], report["rejected"]) == (5, 2, 3)
    for line, field in [(2, "feedback[0].value"), (3, "feedback[0].value"), (4, "id")]:
        assert any(f"line {line}, field '{field}'" in e for e in report["errors"]), report["errors"]
    assert main([*home, "search", "Mars sky colour", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["response"] == "Butterscotch"
