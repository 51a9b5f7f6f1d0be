"""The HTTP service end to end on the tiny model: OpenAI-shaped chat, answers logged before any feedback, feedback
by id (once per event), corrections and follow-ups, streaming, memory pages, erasure, jobs, adapters, limits,
health and metrics."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from fastapi.testclient import TestClient
from logmem.api.app import create_app
from prometheus_client.parser import text_string_to_metric_families

SKY = "What colour is the sky on Mars at noon?"
PORT = "Which port does Redis use by default?"
BLUE_THINGS = ["sky", "sea", "lake", "sapphire", "bluebell", "jeans", "ocean", "iris", "cornflower", "lapis",
               "denim", "cobalt", "navy flag", "blue whale", "smurf", "blueberry"]
Service = dict[str, Any]  # the `service` fixture: client, runtime, headers of acme, globex and the admin
Serve = Callable[..., tuple[TestClient, dict[str, str]]]


@pytest.fixture
def serve(tmp_path: Path, runtime_for: Callable[..., Any]) -> Iterator[Serve]:
    """Start the app over a runtime with the given settings; returns (client, headers of tenant acme's key)."""
    homes = (tmp_path / f"home{i}" for i in itertools.count())
    with ExitStack() as stack:
        def start(**settings: Any) -> tuple[TestClient, dict[str, str]]:
            runtime = runtime_for(next(homes), **settings)
            key, _ = runtime.store.create_key(tenant="acme")
            client = stack.enter_context(TestClient(create_app(runtime=runtime)))
            return client, {"Authorization": f"Bearer {key}"}

        yield start


def liked(question: str, answer: str, *, user: str = "u0") -> dict[str, Any]:
    """A log record: `user` asked `question`, liked `answer`."""
    return {"id": f"{user}:{question}", "user": user, "feedback": [{"turn": 1, "kind": "like"}],
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def ingest(client: TestClient, headers: dict[str, str], *records: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/interactions", headers=headers, json={"records": list(records)})
    assert r.status_code == 200, r.text
    return r.json()


def ask(client: TestClient, headers: dict[str, str], *messages: str | dict[str, str], **body: Any) -> dict[str, Any]:
    """POST a chat completion (strings are user turns); asserts 200, returns the body."""
    turns = [m if isinstance(m, dict) else {"role": "user", "content": m} for m in messages]
    r = client.post("/v1/chat/completions", headers=headers,
                    json={"model": "default", "messages": turns, "max_tokens": 8, **body})
    assert r.status_code == 200, r.text
    return r.json()


def text_of(completion: dict[str, Any]) -> str:
    return str(completion["choices"][0]["message"]["content"])


def feedback(client: TestClient, headers: dict[str, str], interaction_id: str, body: dict[str, Any],
             **extra_headers: str) -> dict[str, Any]:
    r = client.post(f"/v1/interactions/{interaction_id}/feedback", headers={**headers, **extra_headers}, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def search(client: TestClient, headers: dict[str, str], q: str, **params: Any) -> list[dict[str, Any]]:
    r = client.get("/v1/memory/search", headers=headers, params={"q": q, **params})
    assert r.status_code == 200, r.text
    return list(r.json()["hits"])


def experience(client: TestClient, headers: dict[str, str], experience_id: int) -> dict[str, Any]:
    r = client.get(f"/v1/memory/experiences/{experience_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def stats(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    """The memory's stats, less their ages (which grow as the test runs)."""
    r = client.get("/v1/memory/stats", headers=headers)
    assert r.status_code == 200, r.text
    return {k: v for k, v in r.json().items() if k != "age_days"}


def used_ids(completion: dict[str, Any]) -> list[int]:
    return [e["id"] for e in completion["logmem"]["experiences"]]


# --- models and chat -----------------------------------------------------------------------------
def test_models_are_the_served_name_and_the_base_model_and_an_unknown_one_is_model_not_found(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    names = [m["id"] for m in client.get("/v1/models", headers=acme).json()["data"]]
    assert names == ["default", service["runtime"].base_model]

    r = client.post("/v1/chat/completions", headers=acme,
                    json={"model": "gpt-17", "messages": [{"role": "user", "content": SKY}]})
    assert r.status_code == 404
    err = r.json()["error"]
    assert (err["code"], err["param"], err["type"]) == ("model_not_found", "model", "not_found_error")
    assert "gpt-17" in err["message"]
    assert service["runtime"].memory.stats("acme").interactions == 0  # nothing was answered, nothing logged


def test_an_answer_is_logged_under_its_response_id_before_any_feedback(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    out = ask(client, acme, {"role": "system", "content": "Be brief."}, SKY, user="ann")
    assert out["object"] == "chat.completion" and out["model"] == "default"
    assert out["id"] == out["logmem"]["interaction_id"]
    # a tenant nothing measured is served auto (the vote where answers repeat): the reply says so
    assert (out["logmem"]["mode"], out["logmem"]["chosen_by"]) == ("auto", "model")
    usage = out["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    logged = client.get(f"/v1/interactions/{out['id']}", headers=acme).json()
    assert logged["status"] == "answered" and logged["feedback"] == [] and logged["user"] == "ann"
    assert logged["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": SKY},
                                  {"role": "assistant", "content": text_of(out)}]
    now = stats(client, acme)
    assert (now["interactions"], now["experiences"], now["feedback"]) == (1, 0, {})


# --- feedback by id --------------------------------------------------------------------------------
def test_a_liked_answer_becomes_an_experience_and_a_retried_event_counts_once(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    out = ask(client, acme, PORT)
    assert search(client, acme, PORT) == []

    first = feedback(client, acme, out["id"], {"kind": "like", "event_id": "click-1"})
    assert (first["experiences"], first["status"], first["duplicate"]) == (1, "experience", False)
    (hit,) = search(client, acme, PORT)
    assert (hit["trigger"], hit["response"], hit["support"]) == (PORT, text_of(out), 1)
    before = (stats(client, acme), experience(client, acme, hit["id"]))
    assert before[0]["feedback"] == {"like": 1}

    retry = feedback(client, acme, out["id"], {"kind": "like", "event_id": "click-1"})
    assert (retry["duplicate"], retry["experiences"], retry["status"]) == (True, 0, "experience")
    assert (stats(client, acme), experience(client, acme, hit["id"])) == before
    # another event id is another event: the body's id, not its content, tells a retry
    assert not feedback(client, acme, out["id"], {"kind": "like", "event_id": "click-2"})["duplicate"]
    assert stats(client, acme)["feedback"] == {"like": 2}


def test_the_idempotency_key_is_the_event_id_when_the_body_names_none(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    ingest(client, acme, liked(SKY, "Butterscotch"))
    out = ask(client, acme, SKY)
    (used,) = used_ids(out)
    start = experience(client, acme, used)["utility"]

    once = feedback(client, acme, out["id"], {"kind": "dislike"}, **{"Idempotency-Key": "k-1"})
    after_once = experience(client, acme, used)["utility"]
    assert once["credited"] == 1 and not once["duplicate"] and after_once < start
    # the same key again is a retry; a new key with the same body is a new event (the key, not the body, counts)
    assert feedback(client, acme, out["id"], {"kind": "dislike"}, **{"Idempotency-Key": "k-1"})["duplicate"]
    assert experience(client, acme, used)["utility"] == after_once
    assert not feedback(client, acme, out["id"], {"kind": "dislike"}, **{"Idempotency-Key": "k-2"})["duplicate"]
    assert experience(client, acme, used)["utility"] < after_once
    assert stats(client, acme)["feedback"] == {"dislike": 2}


def test_a_correction_of_a_new_question_teaches_its_text(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    out = ask(client, acme, PORT)
    right = "Redis listens on port 6379 unless configured otherwise."
    result = feedback(client, acme, out["id"], {"kind": "correction", "text": right})
    assert (result["experiences"], result["success"]) == (1, 0.0)
    (hit,) = search(client, acme, PORT)
    assert (hit["trigger"], hit["response"]) == (PORT, right)
    logged = client.get(f"/v1/interactions/{out['id']}", headers=acme).json()
    assert logged["feedback"][0] == {"turn": 1, "kind": "correction", "text": right}


# --- corrections against what the memory taught (the vote answers with the memory's answer) -------------
@pytest.mark.parametrize(("users", "winner"), [(1, "corrected"), (3, "remembered")])
def test_a_correction_overturns_the_experience_behind_the_answer_only_at_equal_support(
        serve: Serve, users: int, winner: str) -> None:
    client, acme = serve(choose="vote")
    ingest(client, acme, *[liked(PORT, "6379", user=f"u{i}") for i in range(users)])
    (remembered,) = search(client, acme, PORT)
    assert remembered["support"] == users

    out = ask(client, acme, PORT)
    assert used_ids(out) == [remembered["id"]]
    assert (text_of(out), out["logmem"]["chosen_by"], out["logmem"]["mode"]) == ("6379", "vote", "vote")
    corrected = "On this cluster Redis listens on 6380."
    assert feedback(client, acme, out["id"], {"kind": "correction", "text": corrected})["conflicts"] == 1

    (hit,) = search(client, acme, PORT)
    assert hit["id"] == remembered["id"]
    assert hit["response"] == {"corrected": corrected, "remembered": "6379"}[winner]


# --- the next turn judges an unrated answer ----------------------------------------------------------
def test_thanks_in_the_next_request_judges_the_answer_a_success(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    first = ask(client, acme, PORT)
    assert search(client, acme, PORT) == []
    ask(client, acme, PORT, {"role": "assistant", "content": text_of(first)}, "thanks, that works!")

    assert client.get(f"/v1/interactions/{first['id']}", headers=acme).json()["status"] == "experience"
    (hit,) = search(client, acme, PORT)
    assert (hit["trigger"], hit["response"]) == (PORT, text_of(first))


def test_a_complaint_in_the_next_request_fails_the_answer_and_its_experiences(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    ingest(client, acme, liked(SKY, "Butterscotch"))
    first = ask(client, acme, SKY)
    (used,) = used_ids(first)
    start = experience(client, acme, used)

    ask(client, acme, SKY, {"role": "assistant", "content": text_of(first)}, "No, that's wrong.")
    assert client.get(f"/v1/interactions/{first['id']}", headers=acme).json()["status"] == "filtered"
    assert experience(client, acme, used)["utility"] < start["utility"]


def test_a_dislike_lowers_the_utility_of_the_experiences_that_conditioned_the_answer(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    kib = "How many bytes are in a kibibyte?"
    ingest(client, acme, liked(SKY, "Butterscotch"), liked(kib, "1024"))
    sky, other = search(client, acme, SKY)[0]["id"], search(client, acme, kib)[0]["id"]
    out = ask(client, acme, SKY)
    assert used_ids(out) == [sky]  # the kibibyte is too far from the sky to be retrieved
    before = {i: experience(client, acme, i) for i in (sky, other)}
    assert before[sky]["uses"] == 1 and before[other]["uses"] == 0

    assert feedback(client, acme, out["id"], {"kind": "dislike"})["credited"] == 1
    assert experience(client, acme, sky)["utility"] < before[sky]["utility"]
    assert experience(client, acme, other) == before[other]


# --- streaming ----------------------------------------------------------------------------------------
def _events(client: TestClient, headers: dict[str, str], body: dict[str, Any]) -> list[str]:
    with client.stream("POST", "/v1/chat/completions", headers=headers, json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    return [line[len("data: "):] for line in lines]


@pytest.mark.parametrize("temperature", [None, 1.0], ids=["greedy", "sampled"])
def test_a_stream_sends_the_answer_that_is_logged(service: Service, temperature: float | None) -> None:
    client, acme = service["client"], service["acme"]
    body = {"model": "default", "messages": [{"role": "user", "content": SKY}], "max_tokens": 12, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": temperature}
    with torch.random.fork_rng(devices=[]):  # the sampled answer is the same in every run
        torch.manual_seed(0)
        events = _events(client, acme, body)

    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("error" not in c for c in chunks)
    stream_id = chunks[0]["id"]
    assert {c["id"] for c in chunks} == {stream_id}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    final, usage = chunks[-2], chunks[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert final["logmem"]["interaction_id"] == stream_id
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == (
        usage["usage"]["prompt_tokens"] + usage["usage"]["completion_tokens"])

    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    logged = client.get(f"/v1/interactions/{stream_id}", headers=acme).json()
    assert logged["status"] == "answered"
    assert streamed == logged["messages"][-1]["content"]
    if temperature:
        assert streamed  # a random model that samples says something


def test_a_stream_ends_before_a_stop_string_as_the_logged_answer_does(service: Service) -> None:
    client, acme = service["client"], service["acme"]

    def streamed(**extra: Any) -> tuple[str, str]:
        body = {"model": "default", "messages": [{"role": "user", "content": SKY}], "max_tokens": 12,
                "stream": True, "temperature": 1.0, **extra}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            chunks = [json.loads(e) for e in _events(client, acme, body)[:-1]]
        logged = client.get(f"/v1/interactions/{chunks[0]['id']}", headers=acme).json()["messages"][-1]["content"]
        return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks), logged

    whole, _ = streamed()
    words = whole.split()
    assert len(words) >= 4, whole
    stop = words[2]
    cut, logged = streamed(stop=[stop])
    assert cut == logged == whole[:whole.find(stop)].rstrip()
    assert stop not in cut


def test_a_stream_without_include_usage_sends_no_usage_chunk(service: Service) -> None:
    events = _events(service["client"], service["acme"], {"model": "default", "stream": True, "max_tokens": 4,
                                                          "messages": [{"role": "user", "content": SKY}]})
    assert events[-1] == "[DONE]"
    assert not any("usage" in json.loads(e) for e in events[:-1])


# --- log records in -----------------------------------------------------------------------------------
def test_a_batch_with_a_bad_record_stores_the_good_ones_and_names_the_bad_field(serve: Serve) -> None:
    client, acme = serve(max_batch=3)
    bad = {"messages": [{"role": "robot", "content": "beep"}]}
    report = ingest(client, acme, liked(SKY, "Butterscotch"), bad, liked(PORT, "6379"))
    assert (report["read"], report["stored"], report["rejected"], report["experiences"]) == (3, 2, 1, 2)
    (rejected,) = report["rejected_records"]
    assert rejected["index"] == 1 and rejected["record"] == bad
    assert "messages[0].role" in rejected["error"] and "robot" in rejected["error"]
    assert [h["response"] for h in search(client, acme, PORT, k=1)] == ["6379"]

    r = client.post("/v1/interactions", headers=acme, json={"records": [liked(f"q{i}", "a") for i in range(4)]})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("records:")
    assert stats(client, acme)["interactions"] == 2


# --- the memory: pages, erasure ----------------------------------------------------------------------
def test_experiences_page_sorted_by_utility_or_support(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    questions = ["Which port does Redis use?", "What is the capital of Peru?", "How tall is Everest?",
                 "Who wrote Dune?"]
    # question i gets i+1 likes: support and utility both grow with i
    ingest(client, acme, *[liked(q, f"answer {i}", user=f"u{j}") for i, q in enumerate(questions)
                           for j in range(i + 1)])

    def page(**params: Any) -> dict[str, Any]:
        r = client.get("/v1/memory/experiences", headers=acme, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    whole = page()
    assert whole["total"] == 4 and [e["trigger"] for e in whole["data"]] == questions[::-1]
    utilities = [e["utility"] for e in whole["data"]]
    assert utilities == sorted(utilities, reverse=True) and len(set(utilities)) == 4
    middle = page(limit=2, offset=1)
    assert (middle["total"], middle["limit"], middle["offset"]) == (4, 2, 1)
    assert middle["data"] == whole["data"][1:3]
    assert [e["support"] for e in page(sort="support", order="asc")["data"]] == [1, 2, 3, 4]
    assert page(offset=4)["data"] == []
    assert client.get("/v1/memory/experiences", headers=acme, params={"sort": "colour"}).status_code == 422


def test_deleting_an_experience_removes_it_from_search_and_reads(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    ingest(client, acme, liked(SKY, "Butterscotch"), liked(PORT, "6379"))
    (sky,) = search(client, acme, SKY, k=1)

    r = client.delete(f"/v1/memory/experiences/{sky['id']}", headers=acme)
    assert r.status_code == 200 and r.json()["removed"]["experiences"] == 1
    assert client.get(f"/v1/memory/experiences/{sky['id']}", headers=acme).status_code == 404
    assert sky["id"] not in [h["id"] for h in search(client, acme, SKY)]
    assert [h["response"] for h in search(client, acme, PORT)] == ["6379"]
    assert client.delete(f"/v1/memory/experiences/{sky['id']}", headers=acme).status_code == 404


def test_deleting_a_user_removes_their_interactions_and_experiences_only(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    ingest(client, acme, liked(SKY, "Butterscotch", user="ann"), liked(PORT, "6379", user="bob"))
    anns = ask(client, acme, "Is Mars red?", user="ann")
    bobs = ask(client, acme, "Is Venus hot?", user="bob")

    r = client.delete("/v1/memory/users/ann", headers=acme)
    assert r.status_code == 200 and r.json()["removed"]["interactions"] == 2
    assert client.get(f"/v1/interactions/{anns['id']}", headers=acme).status_code == 404
    assert client.get(f"/v1/interactions/{bobs['id']}", headers=acme).status_code == 200
    assert [e["trigger"] for e in client.get("/v1/memory/experiences", headers=acme).json()["data"]] == [PORT]


# --- consolidation jobs and adapters -----------------------------------------------------------------
def _blue_memory(client: TestClient, headers: dict[str, str]) -> None:
    ingest(client, headers, *[liked(f"Which colour is the {t}?", "BLUE", user=f"u{i}")
                              for i, t in enumerate(BLUE_THINGS)])


def test_a_consolidation_is_queued_by_the_request_and_run_by_the_worker(service: Service) -> None:
    client, acme, runtime = service["client"], service["acme"], service["runtime"]
    _blue_memory(client, acme)
    r = client.post("/v1/consolidations", headers=acme, json={"epochs": 1, "max_steps": 1})
    assert r.status_code == 202
    job = r.json()
    assert r.headers["location"] == f"/v1/consolidations/{job['id']}"
    assert (job["status"], job["progress"], job["metrics"]) == ("queued", 0.0, None)
    assert (job["params"]["epochs"], job["params"]["max_steps"]) == (1, 1)
    assert client.get(r.headers["location"], headers=acme).json()["status"] == "queued"
    assert [j["id"] for j in client.get("/v1/consolidations", headers=acme).json()] == [job["id"]]
    assert client.get("/v1/adapters", headers=acme).json() == []  # nothing trained inside the request

    assert runtime.run_next_job().id == job["id"]
    done = client.get(r.headers["location"], headers=acme).json()
    assert done["status"] in ("succeeded", "rejected") and done["progress"] == 1.0
    assert {"base_nll", "student_nll", "base_probe_ppl", "student_probe_ppl", "gate"} <= set(done["metrics"])
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]
    assert runtime.run_next_job() is None


@pytest.mark.parametrize(("params", "param"), [({"epochs": 0}, "epochs"), ({"batch_size": 4}, "batch_size"),
                                                ({"method": "dpo"}, "method"), ({"lr": 0}, "lr")])
def test_bad_consolidation_params_are_refused_before_a_job_is_queued(service: Service, params: dict[str, Any],
                                                                     param: str) -> None:
    client, acme = service["client"], service["acme"]
    r = client.post("/v1/consolidations", headers=acme, json=params)
    assert r.status_code == 422 and r.json()["error"]["param"] == param
    assert client.get("/v1/consolidations", headers=acme).json() == []


def test_a_promoted_adapter_answers_until_rolled_back_and_again_once_activated(service: Service) -> None:
    client, acme, runtime = service["client"], service["acme"], service["runtime"]
    _blue_memory(client, acme)
    assert ask(client, acme, SKY)["logmem"]["adapter"] is None
    # gated against the bare base: on these one-answer logs the served vote is always right, no adapter beats it
    client.post("/v1/consolidations", headers=acme, json={"epochs": 3, "lr": 0.1, "gate_reference": "base"})
    job = runtime.run_next_job()
    assert job.status == "succeeded", job.metrics
    version = job.metrics["version"]

    (adapter,) = client.get("/v1/adapters", headers=acme).json()
    assert (adapter["version"], adapter["active"], adapter["status"]) == (version, True, "promoted")
    assert adapter["covered"] == job.metrics["train"]
    assert ask(client, acme, SKY)["logmem"]["adapter"] == version
    assert ask(client, acme, SKY, model=runtime.base_model)["logmem"]["adapter"] is None  # the bare base model

    assert client.post("/v1/adapters/rollback", headers=acme).json() == {"active": None}
    assert ask(client, acme, SKY)["logmem"]["adapter"] is None
    r = client.post(f"/v1/adapters/{version}/activate", headers=acme)
    assert r.status_code == 200 and r.json()["active"]
    assert ask(client, acme, SKY)["logmem"]["adapter"] == version
    assert client.post("/v1/adapters/v999/activate", headers=acme).status_code == 404


# --- limits --------------------------------------------------------------------------------------------
def test_a_body_over_the_limit_is_413_whether_its_length_is_declared_or_streamed(serve: Serve) -> None:
    client, acme = serve(max_body_bytes=2048)
    big = {"model": "default", "messages": [{"role": "user", "content": "x" * 3000}]}
    declared = client.post("/v1/chat/completions", headers=acme, json=big)
    chunked = client.post("/v1/chat/completions", headers={**acme, "Content-Type": "application/json"},
                          content=iter([json.dumps(big).encode()]))  # no Content-Length: counted as it arrives
    for r in (declared, chunked):
        assert r.status_code == 413, r.text
        assert r.json()["error"]["type"] == "invalid_request_error" and "2048" in r.json()["error"]["message"]
    assert ask(client, acme, SKY)["id"]  # a body under the limit passes


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "robot", "content": "beep"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": SKY}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": SKY}], "n": 2}, "n"),
])
def test_an_invalid_chat_request_is_422_naming_the_field(service: Service, body: dict[str, Any], param: str) -> None:
    r = service["client"].post("/v1/chat/completions", headers=service["acme"], json={"model": "default", **body})
    assert r.status_code == 422
    err = r.json()["error"]
    assert (err["param"], err["type"]) == (param, "invalid_request_error") and err["message"].startswith(param)


def test_too_many_messages_or_tokens_or_hits_are_422(serve: Serve) -> None:
    client, acme = serve(max_messages=3, max_tokens=16, max_k=4)
    turns = [{"role": "user", "content": f"q{i}"} for i in range(4)]
    bodies: list[tuple[dict[str, Any], str]] = [({"messages": turns}, "messages"),
                                                ({"messages": turns[:1], "max_tokens": 17}, "max_tokens")]
    for body, field in bodies:
        r = client.post("/v1/chat/completions", headers=acme, json={"model": "default", **body})
        assert r.status_code == 422 and r.json()["error"]["message"].startswith(f"{field}:"), r.text
    assert client.get("/v1/memory/search", headers=acme, params={"q": SKY, "k": 5}).status_code == 422
    assert client.get("/v1/memory/search", headers=acme, params={"q": SKY, "k": 4}).status_code == 200
    assert ask(client, acme, *[t["content"] for t in turns[:3]], max_tokens=16)["id"]


def test_generations_over_the_per_key_limit_are_429_with_retry_after(service: Service) -> None:
    client, runtime, acme = service["client"], service["runtime"], service["acme"]
    limit = client.app.state.generation_limit
    caller = runtime.authenticate(acme["Authorization"].removeprefix("Bearer "))
    held = [limit.acquire(caller) for _ in range(runtime.settings.max_concurrent)]

    r = client.post("/v1/chat/completions", headers=acme,
                    json={"model": "default", "messages": [{"role": "user", "content": SKY}]})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert runtime.memory.stats("acme").interactions == 0  # refused before answering
    assert ask(client, service["globex"], SKY)["id"]  # another key's slots are its own

    limit.release(held.pop())
    assert ask(client, acme, SKY)["id"]
    assert ask(client, acme, SKY, stream=False)["id"]  # the answer gave its slot back


def test_a_stream_whose_client_leaves_before_the_first_chunk_gives_its_slot_back(service: Service) -> None:
    client, runtime, acme = service["client"], service["runtime"], service["acme"]
    body = json.dumps({"model": "default", "stream": True, "max_tokens": 4,
                       "messages": [{"role": "user", "content": SKY}]}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "client": ("testclient", 1), "server": ("testserver", 80), "state": {},
             "headers": [(b"authorization", acme["Authorization"].encode()), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}

    async def leave_at_once() -> None:
        """One request whose client hangs up as soon as its body is sent (a slow socket: the response's start
        is still being written when the hang-up is seen)."""
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive() -> dict[str, Any]:
            return next(messages, {"type": "http.disconnect"})

        async def send(message: dict[str, Any]) -> None:
            await anyio.sleep(0.05)

        await client.app(dict(scope), receive, send)

    left = runtime.settings.max_concurrent  # had they kept their slots, the key could answer no more
    for _ in range(left):
        anyio.run(leave_at_once)
    deadline = time.monotonic() + 30  # each abandoned answer gives its slot back at its end
    while (r := client.post("/v1/chat/completions", headers=acme, json={
            "model": "default", "max_tokens": 4, "messages": [{"role": "user", "content": SKY}]})).status_code == 429:
        assert time.monotonic() < deadline, "the slots of the abandoned streams were never given back"
        time.sleep(0.1)
    assert r.status_code == 200  # (an abandoned answer is cancelled, or logged when it ended first: test_limits.py)


# --- health and metrics ------------------------------------------------------------------------------
def test_health_and_metrics(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    assert client.get("/healthz").json() == {"status": "ok"}
    out = ask(client, acme, PORT)
    for _ in range(2):  # a retry is not counted twice
        feedback(client, acme, out["id"], {"kind": "like"})
    service["runtime"].jobs.submit("consolidate", "acme")  # queued as the policy would (one experience: a POST is 409)

    r = client.get("/metrics", headers=service["admin"])  # with the tenants' series (tests/api/test_hardening.py)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(r.text) for s in family.samples}
    assert samples[("logmem_http_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200")))] == 1
    assert samples[("logmem_http_requests_total",
                    (("method", "POST"), ("route", "/v1/chat/completions"), ("status", "200")))] == 1
    assert samples[("logmem_feedback_total", (("kind", "like"),))] == 1
    assert samples[("logmem_jobs", (("state", "queued"),))] == 1
    assert samples[("logmem_jobs", (("state", "running"),))] == 0
    assert samples[("logmem_memory_experiences", (("tenant", "acme"),))] == 1
    assert samples[("logmem_tokens_total", (("kind", "prompt"),))] == out["usage"]["prompt_tokens"]
