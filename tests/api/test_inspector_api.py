"""The routes the inspector page needs beyond the rest of the API (served answers, activity, a text filter, an
experience's history, the prompt a request would get, an answer without memory, the users), on the real service;
each scoped to its tenant like every /v1 route, and the page itself under a strict Content-Security-Policy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_runtime
from logmem.api.app import create_app
from logmem.api.routes.inspector import FILES
from servers import serving
from test_isolation import ANSWER, QUESTION, _acme_data

Service = dict[str, Any]
NEW_OPERATIONS = [("GET", "/v1/interactions"), ("GET", "/v1/memory/activity"), ("GET", "/v1/memory/find"),
                  ("GET", "/v1/memory/experiences/{experience_id}/history"), ("GET", "/v1/memory/prompt"),
                  ("POST", "/v1/memory/baseline"), ("GET", "/v1/memory/users")]


def test_the_new_routes_are_in_the_schema_and_refuse_a_caller_without_a_key(service: Service) -> None:
    client = service["client"]
    paths = client.app.openapi()["paths"]
    for method, path in NEW_OPERATIONS:
        assert method.lower() in paths[path], (method, path)
        r = client.request(method, path.replace("{experience_id}", "1"), params={"q": "x", "text": "x"})
        assert r.status_code == 401, (method, path, r.text)


def test_served_answers_newest_first_with_their_feedback(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    data = _acme_data(service)
    first = data["answer"]["id"]
    second = client.post("/v1/chat/completions", headers=acme, json={
        "model": "default", "user": "bob", "max_tokens": 4,
        "messages": [{"role": "user", "content": "Is the sky blue?"}]}).json()["id"]
    assert client.post(f"/v1/interactions/{first}/feedback", headers=acme,
                       json={"kind": "rating", "value": 5}).status_code == 200

    page = client.get("/v1/interactions", headers=acme, params={"limit": 1}).json()
    assert (page["total"], [a["id"] for a in page["data"]]) == (2, [second])
    older = client.get("/v1/interactions", headers=acme, params={"limit": 1, "offset": 1}).json()["data"][0]
    assert (older["id"], older["user"], older["request"]) == (first, "ann", QUESTION)
    assert older["answer"] == data["answer"]["choices"][0]["message"]["content"]
    assert [(f["kind"], f["value"]) for f in older["feedback"]] == [("rating", 5.0)]
    assert older["status"] != "answered"  # judged
    assert older["experiences"] == [e["id"] for e in data["answer"]["logmem"]["experiences"]]


def test_activity_counts_todays_answers_and_feedback_and_the_utility_histogram(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    data = _acme_data(service)
    answer = data["answer"]["id"]
    for body in ({"kind": "like"}, {"kind": "rating", "value": 2}, {"kind": "like"}):  # the repeated like: once
        client.post(f"/v1/interactions/{answer}/feedback", headers=acme, json=body)
    got = client.get("/v1/memory/activity", headers=acme, params={"days": 7, "bins": 4}).json()
    assert len(got["days"]) == len(got["answers"]) == 7
    assert got["days"][-1] <= time.time() < got["days"][-1] + 86_400
    assert got["answers"] == [0] * 6 + [1]
    assert got["feedback"] == {"like": [0] * 6 + [1], "rating": [0] * 6 + [1]}
    assert got["utility"]["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert sum(got["utility"]["counts"]) == client.get("/v1/memory/stats", headers=acme).json()["experiences"] == 4


def test_find_filters_by_text_in_any_case_and_sorts(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    _acme_data(service)
    page = client.get("/v1/memory/find", headers=acme, params={"text": "REDIS"}).json()
    assert page["total"] == 1 and page["data"][0]["response"] == ANSWER
    # three of the four triggers hold a question mark ("Name a prime." does not)
    page = client.get("/v1/memory/find", headers=acme, params={"text": "?", "sort": "id", "order": "asc"}).json()
    assert page["total"] == 3 and [e["id"] for e in page["data"]] == sorted(e["id"] for e in page["data"])
    # LIKE's wildcards are plain text here
    assert client.get("/v1/memory/find", headers=acme, params={"text": "%"}).json()["total"] == 0


def test_an_experiences_history_shows_the_judged_answers_it_conditioned_and_the_adapters_on_it(
        service: Service) -> None:
    client, acme, runtime = service["client"], service["acme"], service["runtime"]
    data = _acme_data(service)
    experience, answer = data["experience"], data["answer"]
    assert experience in [e["id"] for e in answer["logmem"]["experiences"]]
    before = client.get(f"/v1/memory/experiences/{experience}/history", headers=acme).json()
    assert before["uses"] == [] and before["adapters"] == []  # served, but not judged yet

    client.post(f"/v1/interactions/{answer['id']}/feedback", headers=acme, json={"kind": "dislike"})
    version = runtime.memory.register_adapter(tenant="acme", base_model="tiny", method="sft", seed=0, promoted=True,
                                              metrics={}, covered=[experience], path="/nowhere")
    got = client.get(f"/v1/memory/experiences/{experience}/history", headers=acme).json()
    assert got["experience"]["id"] == experience and got["experience"]["utility"] < before["experience"]["utility"]
    (use,) = got["uses"]
    assert (use["id"], use["user"], use["served"], use["request"]) == (answer["id"], "ann", True, QUESTION)
    assert (use["success"], use["explicit"], [f["kind"] for f in use["feedback"]]) == (0.0, True, ["dislike"])
    used = next(e for e in answer["logmem"]["experiences"] if e["id"] == experience)
    assert use["parts"]["sim"] == pytest.approx(used["sim"]) and use["judged_at"] >= use["at"]
    assert [a["version"] for a in got["adapters"]] == [version]


def test_the_prompt_preview_is_the_prompt_the_model_gets(service: Service) -> None:
    client, acme, runtime = service["client"], service["acme"], service["runtime"]
    _acme_data(service)
    got = client.get("/v1/memory/prompt", headers=acme, params={"q": QUESTION}).json()
    assert [h["rank"] for h in got["hits"]] == list(range(1, len(got["hits"]) + 1))
    assert got["hits"][0]["response"] == ANSWER and got["hits"][0]["in_prompt"]
    for hit in got["hits"]:
        assert hit["score"] == pytest.approx(hit["sim"] + hit["util"] + hit["rec"], abs=1e-5)
    caller = runtime.authenticate(acme["Authorization"].removeprefix("Bearer "))
    reply = runtime.chat(caller, [{"role": "user", "content": QUESTION}], max_tokens=2).reply
    assert got["prompt"] == reply.prompt and got["prompt_tokens"] == reply.prompt_tokens
    assert ANSWER in got["prompt"] and got["memory_tokens"] == reply.memory_tokens


def test_the_baseline_answers_without_memory_and_logs_nothing(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    _acme_data(service)
    before = client.get("/v1/memory/stats", headers=acme).json()["interactions"]
    got = client.post("/v1/memory/baseline", headers=acme, json={"q": QUESTION, "max_tokens": 4}).json()
    assert ANSWER not in got["prompt"] and QUESTION in got["prompt"] and got["adapter"] is None
    assert 1 <= got["completion_tokens"] <= 4
    assert client.get("/v1/memory/stats", headers=acme).json()["interactions"] == before
    too_long = client.post("/v1/memory/baseline", headers=acme, json={"q": "hi", "max_tokens": 10_000})
    assert too_long.status_code == 422 and too_long.json()["error"]["param"] == "max_tokens"


def test_users_and_what_forgetting_one_removes(service: Service) -> None:
    client, acme = service["client"], service["acme"]
    _acme_data(service)
    (ann,) = client.get("/v1/memory/users", headers=acme).json()
    assert (ann["user"], ann["interactions"], ann["experiences"]) == ("ann", 5, 4)
    assert client.delete("/v1/memory/users/ann", headers=acme).json()["removed"] == {"experiences": 4,
                                                                                     "interactions": 5}
    assert client.get("/v1/memory/users", headers=acme).json() == []


# --- tenants: each new route with acme's data, called by globex ---------------------------------------------
def test_no_new_route_shows_another_tenants_data(service: Service) -> None:
    client, acme, globex = service["client"], service["acme"], service["globex"]
    data = _acme_data(service, adapter=True)
    experience = data["experience"]
    client.post(f"/v1/interactions/{data['answer']['id']}/feedback", headers=acme, json={"kind": "like"})

    page = client.get("/v1/interactions", headers=globex).json()
    assert (page["total"], page["data"]) == (0, [])
    activity = client.get("/v1/memory/activity", headers=globex).json()
    assert (sum(activity["answers"]), activity["feedback"], sum(activity["utility"]["counts"])) == (0, {}, 0)
    found = client.get("/v1/memory/find", headers=globex, params={"text": "Redis"}).json()
    assert (found["total"], found["data"]) == (0, [])
    r = client.get(f"/v1/memory/experiences/{experience}/history", headers=globex)
    assert r.status_code == 404
    missing = client.get("/v1/memory/experiences/999999/history", headers=globex)
    assert r.json()["error"]["message"].replace(str(experience), "ID") == missing.json()["error"]["message"].replace(
        "999999", "ID")
    preview = client.get("/v1/memory/prompt", headers=globex, params={"q": QUESTION}).json()
    assert preview["hits"] == [] and ANSWER not in preview["prompt"] and preview["memory_tokens"] == 0
    baseline = client.post("/v1/memory/baseline", headers=globex, json={"q": QUESTION, "max_tokens": 2}).json()
    assert ANSWER not in baseline["prompt"] and baseline["adapter"] is None
    assert client.get("/v1/memory/users", headers=globex).json() == []

    # the same routes show acme its own
    assert client.get("/v1/interactions", headers=acme).json()["total"] == 1
    assert sum(client.get("/v1/memory/activity", headers=acme).json()["answers"]) == 1
    assert client.get("/v1/memory/find", headers=acme, params={"text": "Redis"}).json()["total"] == 1
    history = client.get(f"/v1/memory/experiences/{experience}/history", headers=acme).json()
    assert len(history["uses"]) == 1
    assert client.get("/v1/memory/prompt", headers=acme, params={"q": QUESTION}).json()["hits"]
    assert [u["user"] for u in client.get("/v1/memory/users", headers=acme).json()] == ["ann"]


def test_an_admin_key_sees_the_tenant_it_names_through_the_new_routes(service: Service) -> None:
    client, admin = service["client"], service["admin"]
    _acme_data(service)
    as_acme, as_globex = {**admin, "X-Logmem-Tenant": "acme"}, {**admin, "X-Logmem-Tenant": "globex"}
    assert client.get("/v1/interactions", headers=as_acme).json()["total"] == 1
    assert client.get("/v1/interactions", headers=as_globex).json()["total"] == 0
    assert [u["user"] for u in client.get("/v1/memory/users", headers=as_acme).json()] == ["ann"]
    assert client.get("/v1/memory/users", headers=as_globex).json() == []


# --- the page ------------------------------------------------------------------------------------------------
def test_the_page_and_its_files_are_served_under_a_strict_policy(service: Service) -> None:
    client = service["client"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/inspector/main.js">' in page.text and "<script>" not in page.text
    names = sorted(p.name for p in FILES.iterdir() if p.suffix in (".js", ".css"))
    assert {"main.js", "api.js", "dom.js", "plots.js", "inspector.css"} <= set(names)
    for name in names:
        r = client.get(f"/inspector/{name}")
        assert r.status_code == 200 and r.headers["content-security-policy"] == policy, name
        # no markup parsed from strings, nothing fetched from elsewhere (the SVG namespace is a name, not a fetch)
        for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "http"):
            assert unsafe not in r.text.replace("http://www.w3.org/2000/svg", ""), (name, unsafe)
    assert client.get("/inspector/main.js").headers["content-type"].startswith("text/javascript")
    for name in ("..%2Fapp.py", "nothing.js", "index.html", "app.py"):
        assert client.get(f"/inspector/{name}").status_code == 404, name
    assert "/" not in client.app.openapi()["paths"]


# --- Ask in front of an upstream (`logmem serve --upstream`): the session's second, real logmem server ------------
@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, embedder: Any, wordy_lm: tuple[Any, Any], tiny_folder: Path,
            upstream: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The service in front of the upstream on a real server; tenant acme remembers QUESTION -> ANSWER."""
    runtime = make_runtime(tmp_path_factory.mktemp("proxied") / "home", embedder, wordy_lm, model=str(tiny_folder),
                           upstream=upstream["url"], upstream_key=upstream["key"])
    runtime.ingest([{"id": "r0", "user": "ann", "feedback": [{"turn": 1, "kind": "like"}],
                     "messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]}],
                   tenant="acme")
    key = runtime.store.create_key(tenant="acme")[0]
    with serving(create_app(runtime=runtime)) as url, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        yield {"client": client, "runtime": runtime}


def test_ask_in_front_of_an_upstream_previews_and_answers_through_it(proxied: dict[str, Any],
                                                                     upstream: dict[str, Any]) -> None:
    """What the Ask view calls: the preview, the answer with memory and the baseline, each through the upstream,
    with no model weights loaded in the proxy."""
    client, runtime = proxied["client"], proxied["runtime"]
    question = [{"role": "user", "content": QUESTION}]
    got = client.get("/v1/memory/prompt", params={"q": QUESTION}).json()
    assert got["hits"][0]["response"] == ANSWER and got["hits"][0]["in_prompt"]
    tokenizer = runtime.conditioner().tokenizer
    _, conversation = runtime.conditioner().messages_for(question, tenant="acme")
    assert got["prompt"] == tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert ANSWER in got["prompt"] and got["prompt_tokens"] == len(tokenizer(got["prompt"], add_special_tokens=False)
                                                                   ["input_ids"])

    with_memory = client.post("/v1/chat/completions", json={"model": "default", "max_tokens": 6, "messages": question})
    assert with_memory.status_code == 200 and with_memory.json()["logmem"]["experiences"]
    before = client.get("/v1/memory/stats").json()["interactions"]
    baseline = client.post("/v1/memory/baseline", json={"q": QUESTION, "max_tokens": 6})
    assert baseline.status_code == 200, baseline.text
    got = baseline.json()
    # the upstream's own answer to the bare question (its base model, greedy), asked directly
    direct = httpx.post(f"{upstream['url']}/chat/completions", headers={"Authorization": f"Bearer {upstream['key']}"},
                        json={"model": "tiny-llama", "max_tokens": 6, "messages": question}, timeout=120).json()
    assert got["text"] == direct["choices"][0]["message"]["content"] != with_memory.json()["choices"][0]["message"][
        "content"]
    assert (got["adapter"], got["completion_tokens"]) == (None, direct["usage"]["completion_tokens"])
    assert ANSWER not in got["prompt"] and QUESTION in got["prompt"]
    assert client.get("/v1/memory/stats").json()["interactions"] == before  # nothing logged
    assert runtime._loaded is None  # the proxy never loaded the model's weights
