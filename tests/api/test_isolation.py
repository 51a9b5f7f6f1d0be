"""Keys and tenants: every /v1 route refuses a request without a live key acting for a tenant (and says no more),
and no tenant reads, judges, erases or activates another's data; an admin key acts for the tenant it names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import lora
from fastapi import FastAPI
from fastapi.testclient import TestClient

Service = dict[str, Any]  # the `service` fixture: client, runtime, headers of acme, globex and the admin
QUESTION = "Which port does Redis use by default?"
ANSWER = "Redis listens on port 6379."
# a plausible value for each path parameter type (the ids of real rows are probed in the tenant tests)
PATH_VALUES = {"integer": "1", "string": "v1"}
EXPECTED_OPERATIONS = {  # a floor: the enumeration must find at least these (new routes are found by it)
    ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/interactions"),
    ("GET", "/v1/interactions/{interaction_id}"), ("POST", "/v1/interactions/{interaction_id}/feedback"),
    ("GET", "/v1/memory/stats"), ("GET", "/v1/memory/search"), ("GET", "/v1/memory/experiences"),
    ("GET", "/v1/memory/experiences/{experience_id}"), ("DELETE", "/v1/memory/experiences/{experience_id}"),
    ("DELETE", "/v1/memory/users/{user}"), ("POST", "/v1/consolidations"), ("GET", "/v1/consolidations"),
    ("GET", "/v1/consolidations/{job_id}"), ("GET", "/v1/adapters"), ("POST", "/v1/adapters/rollback"),
    ("POST", "/v1/adapters/{version}/activate"), ("GET", "/v1/canaries"), ("POST", "/v1/canaries/promote"),
    ("POST", "/v1/canaries/stop"), ("POST", "/v1/canaries/pin"), ("GET", "/v1/canaries/{canary_id}/timeline"),
}


def v1_operations(app: FastAPI) -> list[tuple[str, str, str]]:
    """(method, path template, path with its parameters filled) of every /v1 operation the app serves, read from
    its OpenAPI schema (the public, flattened list of routes)."""
    found = []
    for template, operations in app.openapi()["paths"].items():
        if not template.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            values = {p["name"]: PATH_VALUES[p["schema"]["type"]]
                      for p in operation.get("parameters", []) if p["in"] == "path"}
            found.append((method.upper(), template, template.format(**values)))
    return found


def _acme_data(service: Service, *, adapter: bool = False) -> dict[str, Any]:
    """What tenant acme holds: an experience (from user ann's logs), an answer to ann, a queued job, and with
    `adapter` a finished job and the adapter it trained (rejected by the gate: one step teaches nothing)."""
    client, acme, runtime = service["client"], service["acme"], service["runtime"]
    records = [{"id": f"r{i}", "user": "ann", "feedback": [{"turn": 1, "kind": "like"}],
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
               for i, (q, a) in enumerate([(QUESTION, ANSWER), ("Is the sky blue?", "Yes."),
                                           ("What is 2 + 2?", "4"), ("Name a prime.", "7")])]
    assert client.post("/v1/interactions", headers=acme, json={"records": records}).json()["experiences"] == 4
    experience_id = client.get("/v1/memory/search", headers=acme, params={"q": QUESTION}).json()["hits"][0]["id"]
    answer = client.post("/v1/chat/completions", headers=acme, json={
        "model": "default", "user": "ann", "max_tokens": 4, "messages": [{"role": "user", "content": QUESTION}]}).json()
    data = {"experience": experience_id, "answer": answer, "jobs": [], "version": None}
    if adapter:
        trained = client.post("/v1/consolidations", headers=acme, json={"epochs": 1, "max_steps": 1}).json()
        assert runtime.run_next_job().status == "rejected"
        data["jobs"].append(trained["id"])
        data["version"] = client.get(f"/v1/consolidations/{trained['id']}", headers=acme).json()["metrics"]["version"]
    data["jobs"].append(client.post("/v1/consolidations", headers=acme, json={}).json()["id"])
    return data


def _acme_reads(client: TestClient, headers: dict[str, str], data: dict[str, Any]) -> dict[str, int]:
    """The status of each read of acme's rows with `headers`."""
    return {
        "answer": client.get(f"/v1/interactions/{data['answer']['id']}", headers=headers).status_code,
        "experience": client.get(f"/v1/memory/experiences/{data['experience']}", headers=headers).status_code,
        **{f"job {j}": client.get(f"/v1/consolidations/{j}", headers=headers).status_code for j in data["jobs"]},
    }


# --- keys ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("credentials", ["none", "not bearer", "wrong key", "revoked key", "admin, no tenant",
                                         "admin key in the tenant header"])
def test_every_v1_route_refuses_a_caller_without_a_live_key_for_a_tenant(service: Service, credentials: str) -> None:
    client, runtime = service["client"], service["runtime"]
    revoked, record = runtime.store.create_key(tenant="acme")
    runtime.store.revoke_key(key_id=record.id)
    acme_key = service["acme"]["Authorization"].removeprefix("Bearer ")
    headers = {"none": {}, "not bearer": {"Authorization": f"Basic {acme_key}"},
               "wrong key": {"Authorization": "Bearer lm-not-a-key", "X-Logmem-Tenant": "acme"},
               "revoked key": {"Authorization": f"Bearer {revoked}"},
               "admin, no tenant": service["admin"],
               "admin key in the tenant header": {"X-Logmem-Tenant": "admin-secret"}}[credentials]
    operations = v1_operations(client.app)
    assert EXPECTED_OPERATIONS <= {(method, template) for method, template, _ in operations}

    for method, _, path in operations:
        r = client.request(method, path, headers=headers)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        # the same few words whatever was wrong: nothing about which keys or tenants exist
        assert r.json() == {"error": {"message": "unauthorized", "type": "authentication_error", "param": None,
                                      "code": None}}
    assert runtime.store.jobs() == [] and runtime.memory.stats().interactions == 0  # nothing was done


def test_an_admin_key_naming_what_cannot_be_a_tenant_is_a_422_naming_the_header(service: Service) -> None:
    client, admin = service["client"], service["admin"]
    r = client.get("/v1/memory/stats", headers={**admin, "X-Logmem-Tenant": "t" * 201})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "header.x-logmem-tenant"
    assert client.get("/v1/memory/stats", headers={**admin, "X-Logmem-Tenant": "t" * 200}).status_code == 200
    # without a key nothing is said about the header
    assert client.get("/v1/memory/stats", headers={"X-Logmem-Tenant": "t" * 201}).status_code == 401


def test_the_openapi_document_gives_every_v1_route_the_bearer_scheme(service: Service) -> None:
    spec = service["client"].app.openapi()
    scheme = spec["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer" and "X-Logmem-Tenant" in scheme["description"]
    for method, template, _ in v1_operations(service["client"].app):
        assert {"bearer": []} in spec["paths"][template][method.lower()]["security"], (method, template)


def test_a_revoked_key_stops_working_at_once(service: Service) -> None:
    client, runtime = service["client"], service["runtime"]
    key, record = runtime.store.create_key(tenant="acme")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/memory/stats", headers=headers).status_code == 200
    runtime.store.revoke_key(key_id=record.id)
    assert client.get("/v1/memory/stats", headers=headers).status_code == 401


# --- tenants -------------------------------------------------------------------------------------------------
def test_another_tenant_cannot_read_judge_erase_or_activate_what_acme_holds(service: Service) -> None:
    client, acme, globex = service["client"], service["acme"], service["globex"]
    data = _acme_data(service, adapter=True)
    answer_id, experience_id = data["answer"]["id"], data["experience"]
    acme_before = client.get("/v1/memory/experiences", headers=acme).json()

    assert set(_acme_reads(client, globex, data).values()) == {404}
    assert client.post(f"/v1/interactions/{answer_id}/feedback", headers=globex,
                       json={"kind": "correction", "text": "6380"}).status_code == 404
    assert client.delete(f"/v1/memory/experiences/{experience_id}", headers=globex).status_code == 404
    # acme's own adapter is rejected (409 for acme); for globex it does not exist
    assert client.post(f"/v1/adapters/{data['version']}/activate", headers=globex).status_code == 404
    assert client.post(f"/v1/adapters/{data['version']}/activate", headers=acme).status_code == 409
    assert client.post("/v1/adapters/rollback", headers=globex).json() == {"active": None}
    removed = client.delete("/v1/memory/users/ann", headers=globex).json()["removed"]
    assert not any(removed.values()), removed

    # globex's own views show nothing of acme's
    hits = client.get("/v1/memory/search", headers=globex, params={"q": QUESTION}).json()["hits"]
    assert hits == []
    page = client.get("/v1/memory/experiences", headers=globex).json()
    assert (page["total"], page["data"]) == (0, [])
    stats = client.get("/v1/memory/stats", headers=globex).json()
    assert (stats["interactions"], stats["experiences"], stats["feedback"]) == (0, 0, {})
    assert client.get("/v1/consolidations", headers=globex).json() == []
    assert client.get("/v1/adapters", headers=globex).json() == []

    # and acme's data is as it was
    assert set(_acme_reads(client, acme, data).values()) == {200}
    assert client.get("/v1/memory/experiences", headers=acme).json() == acme_before
    logged = client.get(f"/v1/interactions/{answer_id}", headers=acme).json()
    assert (logged["status"], logged["feedback"]) == ("answered", [])
    assert [a["version"] for a in client.get("/v1/adapters", headers=acme).json()] == [data["version"]]


def test_a_404_for_another_tenants_row_reads_as_one_for_a_missing_row(service: Service) -> None:
    client, globex = service["client"], service["globex"]
    data = _acme_data(service)
    job = data["jobs"][0]
    paths = [(f"/v1/interactions/{data['answer']['id']}", "/v1/interactions/0123456789abcdef", data["answer"]["id"],
              "0123456789abcdef"),
             (f"/v1/memory/experiences/{data['experience']}", "/v1/memory/experiences/999999",
              str(data["experience"]), "999999"),
             (f"/v1/consolidations/{job}", "/v1/consolidations/999999", str(job), "999999")]
    for theirs, missing, their_id, missing_id in paths:
        a, b = client.get(theirs, headers=globex), client.get(missing, headers=globex)
        assert a.status_code == b.status_code == 404
        assert a.json()["error"]["message"].replace(their_id, "ID") == b.json()["error"]["message"].replace(
            missing_id, "ID")


def test_a_conversation_of_another_tenant_neither_conditions_nor_judges_acmes(service: Service) -> None:
    client, acme, globex = service["client"], service["acme"], service["globex"]
    data = _acme_data(service)
    answer = data["answer"]
    said = answer["choices"][0]["message"]["content"]
    assert answer["logmem"]["experiences"]  # acme's memory conditioned acme's answer

    theirs = client.post("/v1/chat/completions", headers=globex, json={
        "model": "default", "max_tokens": 4, "messages": [
            {"role": "user", "content": QUESTION}, {"role": "assistant", "content": said},
            {"role": "user", "content": "thanks, that works!"}]}).json()
    assert theirs["logmem"]["experiences"] == []
    assert client.get(f"/v1/interactions/{answer['id']}", headers=acme).json()["status"] == "answered"


def test_records_naming_another_tenant_are_stored_under_the_callers(service: Service) -> None:
    client, acme, globex = service["client"], service["acme"], service["globex"]
    record = {"id": "x1", "tenant": "acme", "user": "mallory", "feedback": [{"turn": 1, "kind": "like"}],
              "messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Port 1."}]}
    assert client.post("/v1/interactions", headers=globex, json={"records": [record]}).json()["experiences"] == 1
    assert client.get("/v1/memory/stats", headers=acme).json()["experiences"] == 0
    (hit,) = client.get("/v1/memory/search", headers=globex, params={"q": QUESTION}).json()["hits"]
    assert hit["response"] == "Port 1."


def test_a_tenant_key_cannot_name_another_tenant_but_an_admin_key_acts_for_the_one_named(service: Service) -> None:
    client, globex, admin = service["client"], service["globex"], service["admin"]
    data = _acme_data(service)
    assert set(_acme_reads(client, {**globex, "X-Logmem-Tenant": "acme"}, data).values()) == {404}
    assert set(_acme_reads(client, {**admin, "X-Logmem-Tenant": "acme"}, data).values()) == {200}
    assert set(_acme_reads(client, {**admin, "X-Logmem-Tenant": "globex"}, data).values()) == {404}

    as_acme = {**admin, "X-Logmem-Tenant": "acme"}
    stats = client.get("/v1/memory/stats", headers=as_acme).json()
    assert (stats["interactions"], stats["experiences"]) == (5, 4)
    hits = client.get("/v1/memory/search", headers=as_acme, params={"q": QUESTION}).json()["hits"]
    assert hits[0]["response"] == ANSWER


# --- adapters are tenant data --------------------------------------------------------------------------------
def test_a_lora_loaded_for_one_tenant_is_listed_to_and_answers_that_tenant_alone(
        service: Service, tmp_path: Path, wordy_lm: tuple[Any, Any]) -> None:
    client, runtime, acme, globex = service["client"], service["runtime"], service["acme"], service["globex"]
    seen: list[httpx.Response] = []  # every response, to look for a server-side path in any of them

    def admin(tenant: str) -> dict[str, str]:
        return {**service["admin"], "X-Logmem-Tenant": tenant}

    def send(method: str, path: str, headers: dict[str, str], body: Any = None) -> httpx.Response:
        seen.append(client.request(method, path, headers=headers, json=body))
        return seen[-1]

    def models(headers: dict[str, str]) -> dict[str, Any]:
        return {m["id"]: m for m in send("GET", "/v1/models", headers).json()["data"]}

    def ask(headers: dict[str, str], model: str) -> httpx.Response:
        return send("POST", "/v1/chat/completions", headers,
                    {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": QUESTION}]})

    theirs, ours = lora(wordy_lm[0], 1, tmp_path / "acme-lora"), lora(wordy_lm[0], 2, tmp_path / "globex-lora")
    load = {"lora_name": "acme-v1", "lora_path": str(theirs)}
    assert send("POST", "/v1/load_lora_adapter", admin("acme"), load).status_code == 200

    listed = models(acme)["acme-v1"]
    assert (listed["root"], listed["parent"]) == (runtime.base_model, runtime.base_model)  # not its folder
    assert "acme-v1" not in models(globex)
    refused = ask(globex, "acme-v1")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    answered = ask(acme, "acme-v1")
    assert answered.status_code == 200 and answered.json()["logmem"]["adapter"] == "acme-v1"
    # an admin acting for globex neither unloads acme's adapter nor loads acme's registered folder for globex
    assert send("POST", "/v1/unload_lora_adapter", admin("globex"), {"lora_name": "acme-v1"}).status_code == 404
    registered = runtime.memory.register_adapter(tenant="acme", base_model=runtime.base_model, method="sft", seed=0,
                                                 promoted=True, metrics={}, covered=[], path=str(theirs))
    stolen = send("POST", "/v1/load_lora_adapter", admin("globex"), {"lora_name": "mine", "lora_path": str(theirs)})
    assert stolen.status_code == 404 and registered
    assert ask(acme, "acme-v1").json()["choices"] == answered.json()["choices"]  # acme still served by it

    # one name in two tenants: each is answered by the weights loaded for it
    for tenant, folder in (("globex", ours), ("acme", theirs)):
        body = {"lora_name": "shared", "lora_path": str(folder)}
        assert send("POST", "/v1/load_lora_adapter", admin(tenant), body).status_code == 200
    text = {t: ask(h, "shared").json()["choices"][0]["message"]["content"] for t, h in (("acme", acme),
                                                                                         ("globex", globex))}
    assert text["acme"] == answered.json()["choices"][0]["message"]["content"]
    assert text["globex"] != text["acme"], "the seeds must make the two adapters answer differently"
    assert send("POST", "/v1/unload_lora_adapter", admin("globex"), {"lora_name": "shared"}).status_code == 200
    assert "shared" in models(acme) and "shared" not in models(globex)

    assert seen and not [r.text for r in seen if str(tmp_path) in r.text], "a response carried a server-side path"
