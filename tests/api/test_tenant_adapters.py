"""One running server answers each tenant with its own active adapter over one base model, and follows
activations and rollbacks without a restart."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from conftest import lora
from fastapi.testclient import TestClient
from logmem.api.app import create_app
from logmem.model.generator import MemoryGenerator
from peft import PeftModel

QUESTION = [{"role": "user", "content": "Name the capital of France."}]


def _reference(model: Any, tokenizer: Any) -> str:
    """What `model` answers alone, as the service would with an empty memory."""
    return MemoryGenerator(model, tokenizer, None).chat(QUESTION, max_new_tokens=8, log=False).text


def test_interleaved_tenants_each_get_their_own_adapter(tmp_path: Path, runtime_for: Any, wordy_lm: Any) -> None:
    base, tokenizer = wordy_lm
    paths = {tenant: lora(base, seed, tmp_path / tenant) for tenant, seed in (("acme", 1), ("globex", 2))}
    want = {tenant: _reference(PeftModel.from_pretrained(copy.deepcopy(base), str(p)).eval(), tokenizer)
            for tenant, p in paths.items()}
    want["initech"] = _reference(base, tokenizer)
    assert len(set(want.values())) == 3, "the seeds must make the three models answer differently"

    runtime = runtime_for(tmp_path / "home", max_tokens=8)
    versions = {}
    for tenant, path in paths.items():
        versions[tenant] = runtime.memory.register_adapter(tenant=tenant, base_model="tiny", method="sft", seed=0,
                                                           promoted=True, metrics={}, covered=[], path=str(path))
        runtime.memory.activate_adapter(versions[tenant], tenant=tenant)
    keys = {t: runtime.store.create_key(tenant=t)[0] for t in ("acme", "globex", "initech")}
    with TestClient(create_app(runtime=runtime)) as client:
        def ask(tenant: str, model: str = "default") -> dict[str, Any]:
            r = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {keys[tenant]}"},
                            json={"model": model, "messages": QUESTION, "max_tokens": 8})
            assert r.status_code == 200, r.text
            return r.json()

        for tenant in ["acme", "globex", "initech", "globex", "acme", "initech"]:
            got = ask(tenant)
            assert got["choices"][0]["message"]["content"] == want[tenant], tenant
            assert got["logmem"]["adapter"] == versions.get(tenant)
        assert ask("acme", runtime.base_model)["choices"][0]["message"]["content"] == want["initech"]

        r = client.post("/v1/adapters/rollback", headers={"Authorization": f"Bearer {keys['acme']}"})
        assert r.json() == {"active": None}
        after = ask("acme")  # the same running server: acme is now the base model, globex keeps its adapter
        assert (after["choices"][0]["message"]["content"], after["logmem"]["adapter"]) == (want["initech"], None)
        assert ask("globex")["choices"][0]["message"]["content"] == want["globex"]
        r = client.post(f"/v1/adapters/{versions['acme']}/activate",
                        headers={"Authorization": f"Bearer {keys['acme']}"})
        assert r.status_code == 200 and r.json()["active"] is True
        assert ask("acme")["choices"][0]["message"]["content"] == want["acme"]


def test_another_tenants_adapter_cannot_be_activated(tmp_path: Path, runtime_for: Any) -> None:
    runtime = runtime_for(tmp_path / "home")
    version = runtime.memory.register_adapter(tenant="acme", base_model="tiny", method="sft", seed=0, promoted=True,
                                              metrics={}, covered=[], path=str(tmp_path / "nowhere"))
    key = runtime.store.create_key(tenant="globex")[0]
    with TestClient(create_app(runtime=runtime)) as client:
        r = client.post(f"/v1/adapters/{version}/activate", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert runtime.memory.active_adapter("acme") is None
