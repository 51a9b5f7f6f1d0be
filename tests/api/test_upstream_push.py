"""`logmem adapters push`: a tenant's active adapter is loaded into a real server with vLLM's runtime LoRA routes (a
logmem server process in local mode) under `<tenant>-<version>`; the proxy in front of it then answers that tenant
with the adapter (the text local mode gives with it), other tenants without; a new version is loaded beside and the
old one unloaded, rollback pushes the previous one, and an adapter of another base model is refused before any load."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import UPSTREAM_ADMIN, lora, make_runtime
from fastapi.testclient import TestClient
from logmem.api.app import create_app
from logmem.api.cli import EXIT_ERROR, EXIT_OK, main
from logmem.api.runtime import Caller
from logmem.model.generator import MemoryGenerator
from peft import PeftModel
from servers import serving

QUESTION = "Name the capital of France."


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, embedder: Any, wordy_lm: tuple[Any, Any], tiny_folder: Path,
           upstream: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The proxy (on a real server) in front of the session's upstream, trusting its model list and the tenants'
    active adapters for no time (the CLI changes them from runtimes of its own); acme has two promoted adapters on
    the tiny base, the first active."""
    folder = tmp_path_factory.mktemp("push")
    runtime = make_runtime(folder / "home", embedder, wordy_lm, model=str(tiny_folder), upstream=upstream["url"],
                           upstream_key=upstream["key"], upstream_models_seconds=0, state_cache_seconds=0)
    base = wordy_lm[0]
    versions, paths = [], []
    for seed in (1, 2):
        paths.append(lora(base, seed, folder / f"lora{seed}"))
        versions.append(runtime.memory.register_adapter(tenant="acme", base_model=runtime.base_model, method="sft",
                                                        seed=0, promoted=True, metrics={}, covered=[],
                                                        path=str(paths[-1])))
    runtime.memory.activate_adapter(versions[0], tenant="acme")
    keys = {t: runtime.store.create_key(tenant=t)[0] for t in ("acme", "globex")}
    with serving(create_app(runtime=runtime)) as url:
        yield {"url": url, "runtime": runtime, "keys": keys, "home": folder / "home", "versions": versions,
               "paths": paths}


def ask(state: dict[str, Any], tenant: str) -> dict[str, Any]:
    r = httpx.post(f"{state['url']}/v1/chat/completions", timeout=120,
                   headers={"Authorization": f"Bearer {state['keys'][tenant]}"},
                   json={"model": "default", "max_tokens": 8, "messages": [{"role": "user", "content": QUESTION}]})
    assert r.status_code == 200, r.text
    return dict(r.json())


def local(lm: tuple[Any, Any], path: Path | None) -> str:
    """What local mode answers (empty memory) with the adapter at `path`, or the base model."""
    base, tokenizer = lm
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(path)).eval() if path else base
    return MemoryGenerator(model, tokenizer, None).chat([{"role": "user", "content": QUESTION}], max_new_tokens=8,
                                                        log=False).text


def served(upstream: dict[str, Any]) -> dict[str, str | None]:
    """The upstream's model list: id -> parent."""
    r = httpx.get(f"{upstream['url']}/models", headers={"Authorization": f"Bearer {upstream['key']}"})
    return {m["id"]: m.get("parent") for m in r.json()["data"]}


def push(state: dict[str, Any], upstream: dict[str, Any], *args: str) -> int:
    return main(["--home", str(state["home"]), "adapters", "--tenant", "acme", *args, "--key-env", "UPSTREAM_ADMIN",
                 "--as-tenant", "proxy"])  # the upstream knows the proxy as tenant proxy (its key's)


def test_a_pushed_adapter_answers_its_tenant_through_the_proxy(pushed: dict[str, Any], upstream: dict[str, Any],
                                                               wordy_lm: tuple[Any, Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_ADMIN", UPSTREAM_ADMIN)
    v1, v2 = pushed["versions"]
    want = {"base": local(wordy_lm, None), v1: local(wordy_lm, pushed["paths"][0]),
            v2: local(wordy_lm, pushed["paths"][1])}
    assert len(set(want.values())) == 3, "the seeds must make the three models answer differently"

    # active but not pushed yet: the upstream has no such model, so the base answers and the log says so
    before = ask(pushed, "acme")
    assert (before["choices"][0]["message"]["content"], before["logmem"]["adapter"]) == (want["base"], None)

    assert push(pushed, upstream, "push", "--to", upstream["url"]) == EXIT_OK
    assert served(upstream)[f"acme-{v1}"] == "tiny-llama"
    got = ask(pushed, "acme")
    assert (got["choices"][0]["message"]["content"], got["logmem"]["adapter"]) == (want[v1], v1)
    assert (before["logmem"]["mode"], got["logmem"]["mode"]) == ("memory", "memory+adapter")
    assert pushed["runtime"].memory.answer(got["id"], tenant="acme").adapter == v1  # logged as local mode logs it
    other = ask(pushed, "globex")
    assert (other["choices"][0]["message"]["content"], other["logmem"]["adapter"]) == (want["base"], None)
    # the upstream has acme's adapter loaded, but the proxy neither lists it to globex nor answers globex with it
    globex = {"Authorization": f"Bearer {pushed['keys']['globex']}"}
    listed = httpx.get(f"{pushed['url']}/v1/models", headers=globex, timeout=120).json()["data"]
    assert not [m for m in listed if m["id"] == f"acme-{v1}" or "/" in str(m.get("root"))], listed
    stolen = httpx.post(f"{pushed['url']}/v1/chat/completions", headers=globex, timeout=120, json={
        "model": f"acme-{v1}", "max_tokens": 8, "messages": [{"role": "user", "content": QUESTION}]})
    assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "model_not_found"
    assert push(pushed, upstream, "push", "--to", upstream["url"]) == EXIT_OK  # already there: nothing reloaded

    # a new version is loaded under its own name and the old one unloaded; rollback pushes the old one again
    assert push(pushed, upstream, "activate", v2, "--push-to", upstream["url"]) == EXIT_OK
    names = served(upstream)
    assert f"acme-{v2}" in names and f"acme-{v1}" not in names
    assert ask(pushed, "acme")["choices"][0]["message"]["content"] == want[v2]
    assert push(pushed, upstream, "rollback", "--push-to", upstream["url"]) == EXIT_OK
    names = served(upstream)
    assert f"acme-{v1}" in names and f"acme-{v2}" not in names
    assert ask(pushed, "acme")["choices"][0]["message"]["content"] == want[v1]


def test_a_pushed_canary_answers_its_share_of_conversations_through_the_proxy(
        pushed: dict[str, Any], upstream: dict[str, Any], wordy_lm: tuple[Any, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_ADMIN", UPSTREAM_ADMIN)
    v1, v2 = pushed["versions"]
    memory = pushed["runtime"].memory
    memory.activate_adapter(v1, tenant="acme")
    memory.canaries.start(v2, tenant="acme", share=0.5, mode="memory+adapter")
    try:
        assert push(pushed, upstream, "push", "--to", upstream["url"]) == EXIT_OK
        names = served(upstream)
        assert f"acme-{v1}" in names and f"acme-{v2}" in names  # the canary is loaded beside the active adapter
        arms = set()
        for i in range(8):
            question = f"Name the capital of country number {i}."
            r = httpx.post(f"{pushed['url']}/v1/chat/completions", timeout=120,
                           headers={"Authorization": f"Bearer {pushed['keys']['acme']}"},
                           json={"model": "default", "max_tokens": 4,
                                 "messages": [{"role": "user", "content": question}]})
            assert r.status_code == 200, r.text
            logged = memory.answer(r.json()["id"], tenant="acme")
            arm = logged.served["canary"]["arm"]
            arms.add(arm)
            assert arm == memory.canaries.arm("acme", [{"role": "user", "content": question}])[1]
            assert r.json()["logmem"]["adapter"] == logged.adapter == (v2 if arm == "canary" else v1)
        assert arms == {"canary", "current"}
    finally:
        memory.canaries.stop("acme")


def test_an_adapter_of_another_base_model_is_refused_before_any_load(
        pushed: dict[str, Any], upstream: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("UPSTREAM_ADMIN", UPSTREAM_ADMIN)
    runtime = pushed["runtime"]
    before = served(upstream)
    active = runtime.memory.active_adapter("acme")
    other = runtime.memory.register_adapter(tenant="acme", base_model="Llama-3.1-8B-Instruct", method="sft", seed=0,
                                            promoted=True, metrics={}, covered=[], path=str(pushed["paths"][0]))
    runtime.memory.activate_adapter(other, tenant="acme")
    try:
        assert push(pushed, upstream, "push", "--to", upstream["url"]) == EXIT_ERROR
        assert "Llama-3.1-8B-Instruct" in capsys.readouterr().err
        assert served(upstream) == before
    finally:
        if active is not None:
            runtime.memory.activate_adapter(active.version, tenant="acme")


def test_the_lora_routes_take_vllms_shapes_from_an_admin_only(upstream: dict[str, Any], tmp_path: Path,
                                                              wordy_lm: tuple[Any, Any]) -> None:
    path = lora(wordy_lm[0], 3, tmp_path / "lora")
    admin = {"Authorization": f"Bearer {UPSTREAM_ADMIN}", "X-Logmem-Tenant": "ops"}
    with httpx.Client(base_url=upstream["url"], timeout=120) as client:
        body = {"lora_name": "probe", "lora_path": str(path)}
        for refused in ({"Authorization": f"Bearer {upstream['key']}"},  # a tenant's key
                        {"Authorization": f"Bearer {UPSTREAM_ADMIN}"}):  # an admin naming no tenant
            assert client.post("/load_lora_adapter", json=body, headers=refused).status_code == 401
        assert client.post("/load_lora_adapter", json=body, headers=admin).status_code == 200
        again = client.post("/load_lora_adapter", json=body, headers=admin)
        assert again.status_code == 409 and again.json()["error"]["type"] == "conflict_error"  # never in place
        missing = client.post("/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path)},
                              headers=admin)
        assert missing.status_code == 404 and "adapter_config.json" in missing.json()["error"]["message"]
        assert client.post("/unload_lora_adapter", json={"lora_name": "probe"}, headers=admin).status_code == 200
        assert client.post("/unload_lora_adapter", json={"lora_name": "probe"}, headers=admin).status_code == 404


@pytest.fixture(scope="module")
def auto(tmp_path_factory: pytest.TempPathFactory, embedder: Any, wordy_lm: tuple[Any, Any], tiny_folder: Path,
         upstream: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A proxy (on a real server) with `push_to` set to the session's upstream: tenant initech has two promoted
    adapters on the tiny base (none active) and one trained on another base model."""
    folder = tmp_path_factory.mktemp("auto")
    runtime = make_runtime(folder / "home", embedder, wordy_lm, model=str(tiny_folder), upstream=upstream["url"],
                           upstream_key=upstream["key"], push_to=upstream["url"], push_key=UPSTREAM_ADMIN,
                           push_as_tenant="proxy")
    versions, paths = [], []
    for seed in (4, 5):
        paths.append(lora(wordy_lm[0], seed, folder / f"lora{seed}"))
        versions.append(runtime.memory.register_adapter(tenant="initech", base_model=runtime.base_model,
                                                        method="sft", seed=0, promoted=True, metrics={}, covered=[],
                                                        path=str(paths[-1])))
    alien = runtime.memory.register_adapter(tenant="initech", base_model="Llama-3.1-8B-Instruct", method="sft", seed=0,
                                            promoted=True, metrics={}, covered=[], path=str(paths[0]))
    key = runtime.store.create_key(tenant="initech")[0]
    with serving(create_app(runtime=runtime)) as url:
        yield {"url": url, "runtime": runtime, "keys": {"initech": key}, "versions": versions, "paths": paths,
               "alien": alien}


def test_with_push_to_activation_and_rollback_push_the_adapter(auto: dict[str, Any], upstream: dict[str, Any],
                                                               wordy_lm: tuple[Any, Any]) -> None:
    v1, v2 = auto["versions"]
    want = {v1: local(wordy_lm, auto["paths"][0]), v2: local(wordy_lm, auto["paths"][1])}
    headers = {"Authorization": f"Bearer {auto['keys']['initech']}"}
    with httpx.Client(base_url=f"{auto['url']}/v1", headers=headers, timeout=120) as client:
        assert client.post(f"/adapters/{v1}/activate").status_code == 200
        names = served(upstream)
        assert names[f"initech-{v1}"] == "tiny-llama"  # loaded as the activation answered, no push command
        got = ask(auto, "initech")  # this process reads the upstream's model list again after its own push
        assert (got["choices"][0]["message"]["content"], got["logmem"]["adapter"]) == (want[v1], v1)
        # a serving mode without the adapter (an operator's pin here) gets the base through the proxy, as locally
        runtime, initech = auto["runtime"], Caller("initech", None)
        runtime.pin_mode(initech, "memory")
        try:
            assert ask(auto, "initech")["logmem"]["adapter"] is None
        finally:
            runtime.pin_mode(initech, None)

        assert client.post(f"/adapters/{v2}/activate").status_code == 200
        names = served(upstream)
        assert f"initech-{v2}" in names and f"initech-{v1}" not in names  # beside, never in place; the old one out
        assert ask(auto, "initech")["choices"][0]["message"]["content"] == want[v2]

        back = client.post("/adapters/rollback")
        assert back.status_code == 200 and back.json()["active"] == v1
        names = served(upstream)
        assert f"initech-{v1}" in names and f"initech-{v2}" not in names
        assert ask(auto, "initech")["choices"][0]["message"]["content"] == want[v1]

        # another base model: refused before any load, and the active adapter stays
        refused = client.post(f"/adapters/{auto['alien']}/activate")
        assert refused.status_code == 409 and "Llama-3.1-8B-Instruct" in refused.json()["error"]["message"]
        assert served(upstream) == names
        assert auto["runtime"].memory.active_adapter("initech").version == v1

        back = client.post("/adapters/rollback")  # v1 was first: back to the base model, nothing of initech left
        assert back.status_code == 200 and back.json()["active"] is None
        assert not [n for n in served(upstream) if n.startswith("initech-")]
        assert ask(auto, "initech")["logmem"]["adapter"] is None


def test_with_push_to_promoting_a_canary_pushes_it(auto: dict[str, Any], upstream: dict[str, Any]) -> None:
    v1, v2 = auto["versions"]
    runtime = auto["runtime"]
    headers = {"Authorization": f"Bearer {auto['keys']['initech']}"}
    with httpx.Client(base_url=f"{auto['url']}/v1", headers=headers, timeout=120) as client:
        assert client.post(f"/adapters/{v1}/activate").status_code == 200
        runtime.memory.canaries.start(v2, tenant="initech", share=0.5)
        promoted = client.post("/canaries/promote")
        assert promoted.status_code == 200, promoted.text
        assert (promoted.json()["status"], promoted.json()["pushed"]["name"]) == ("promoted", f"initech-{v2}")
        names = served(upstream)
        assert f"initech-{v2}" in names and f"initech-{v1}" not in names  # as an activation pushes
        assert runtime.memory.active_adapter("initech").version == v2
        for _ in range(2):  # back to the base model, nothing of initech left
            assert client.post("/adapters/rollback").status_code == 200
    assert not [n for n in served(upstream) if n.startswith("initech-")]


def test_with_push_to_an_unreachable_server_a_promoted_canary_stays_promoted(
        tmp_path: Path, embedder: Any, wordy_lm: tuple[Any, Any], tiny_folder: Path) -> None:
    from servers import free_port

    runtime = make_runtime(tmp_path / "home", embedder, wordy_lm, model=str(tiny_folder),
                           push_to=f"http://127.0.0.1:{free_port()}/v1")
    version = runtime.memory.register_adapter(tenant="initech", base_model=runtime.base_model, method="sft", seed=0,
                                              promoted=True, metrics={}, covered=[],
                                              path=str(lora(wordy_lm[0], 7, tmp_path / "lora")))
    runtime.memory.canaries.start(version, tenant="initech", share=0.5)
    key = runtime.store.create_key(tenant="initech")[0]
    with TestClient(create_app(runtime=runtime)) as client:
        r = client.post("/v1/canaries/promote", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
    assert "was promoted, but pushing it to" in r.json()["error"]["message"]  # the promotion stands, and says so
    assert runtime.memory.active_adapter("initech").version == version


def test_with_push_to_an_unreachable_server_activates_nothing(tmp_path: Path, embedder: Any,
                                                              wordy_lm: tuple[Any, Any], tiny_folder: Path) -> None:
    from servers import free_port

    runtime = make_runtime(tmp_path / "home", embedder, wordy_lm, model=str(tiny_folder),
                           push_to=f"http://127.0.0.1:{free_port()}/v1")
    version = runtime.memory.register_adapter(tenant="initech", base_model=runtime.base_model, method="sft", seed=0,
                                              promoted=True, metrics={}, covered=[],
                                              path=str(lora(wordy_lm[0], 6, tmp_path / "lora")))
    key = runtime.store.create_key(tenant="initech")[0]
    with TestClient(create_app(runtime=runtime)) as client:
        r = client.post(f"/v1/adapters/{version}/activate", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
    assert runtime.memory.active_adapter("initech") is None


def test_with_push_to_a_promoting_job_pushes_its_adapter(auto: dict[str, Any], upstream: dict[str, Any]) -> None:
    from logmem.model.consolidate import ConsolidationConfig

    runtime = auto["runtime"]
    records = [{"id": f"u{i}:{thing}", "user": f"u{i}", "feedback": [{"turn": 1, "kind": "like"}],
                "messages": [{"role": "user", "content": f"Which colour is the {thing}?"},
                             {"role": "assistant", "content": "BLUE"}]}
               for i, thing in enumerate(["sky", "sea", "lake", "sapphire", "bluebell", "jeans", "ocean", "iris",
                                          "cornflower", "lapis", "denim", "cobalt", "navy flag", "blue whale"])]
    runtime.ingest(records, tenant="hooli")
    # as the service's own promotion test: a one-answer memory, an adapter that learns it, gated against the bare base
    params: dict[str, Any] = {"epochs": 3, "lr": 0.1}
    if "gate_reference" in inspect.signature(ConsolidationConfig).parameters:  # a gate that knows serving modes
        params["gate_reference"] = "base"
    runtime.submit_consolidation(Caller("hooli", None), params)
    job = runtime.run_next_job()
    assert job is not None and job.status == "succeeded", job
    version = job.metrics["version"]
    assert served(upstream)[f"hooli-{version}"] == "tiny-llama"  # pushed when the job promoted it
    key = runtime.store.create_key(tenant="hooli")[0]
    got = ask({**auto, "keys": {"hooli": key}}, "hooli")
    # the adapter answers where the tenant's serving mode uses it, as in local mode (the job may have measured the
    # vote better on this one-answer memory)
    assert got["logmem"]["adapter"] == runtime.active_version(Caller("hooli", None))
    assert runtime.memory.active_adapter("hooli").version == version
