"""Export and import of a tenant through both front ends: `logmem export` / `import`, and `/v1/tenant/export` and
`/import` for an admin key (a tenant's key, or an admin key naming no tenant, is refused and writes nothing)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from logmem.api.cli import main
from logmem.memory import Embedder, VectorMemory
from tenants import answers, build_tenant, members, rewrite


def _admin(service: dict[str, Any], tenant: str) -> dict[str, str]:
    return {**service["admin"], "X-Logmem-Tenant": tenant}


def test_an_admin_exports_and_imports_a_tenant_over_http(service: dict[str, Any], tmp_path: Path) -> None:
    client, memory = service["client"], service["runtime"].memory
    build_tenant(memory, "acme", tmp_path)
    got = client.get("/v1/tenant/export", headers=_admin(service, "acme"))
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    (tmp_path / "acme.zip").write_bytes(got.content)
    assert json.loads(members(tmp_path / "acme.zip")["manifest.json"])["tenant"] == "acme"

    sent = client.post("/v1/tenant/import", content=got.content, headers=_admin(service, "acme-copy"))
    assert sent.status_code == 200, sent.text
    assert sent.json()["tenant"] == "acme-copy" and sent.json()["added"]["experiences"] > 0
    assert answers(memory, "acme-copy") == {**answers(memory, "acme"), "served": None}
    again = client.post("/v1/tenant/import", content=got.content, headers=_admin(service, "acme-copy"))
    assert again.status_code == 200 and sum(again.json()["added"].values()) == 0


def test_only_an_admin_key_naming_a_tenant_exports_or_imports(service: dict[str, Any], tmp_path: Path) -> None:
    client, memory = service["client"], service["runtime"].memory
    build_tenant(memory, "acme", tmp_path)
    memory.export_tenant(tmp_path / "acme.zip", tenant="acme")
    archive = (tmp_path / "acme.zip").read_bytes()
    for headers in (service["acme"], {**service["acme"], "X-Logmem-Tenant": "acme"}, service["admin"], {}):
        assert client.get("/v1/tenant/export", headers=headers).status_code == 401
        assert client.post("/v1/tenant/import", content=archive, headers=headers).status_code == 401
    assert memory.stats("globex").experiences == 0 and memory.stats("default").experiences == 0
    assert client.get("/v1/tenant/export", headers=_admin(service, "nobody")).status_code == 404


def test_a_damaged_archive_sent_over_http_is_refused_naming_the_member(service: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    client, memory = service["client"], service["runtime"].memory
    build_tenant(memory, "acme", tmp_path)
    memory.export_tenant(tmp_path / "acme.zip", tenant="acme")
    rows = members(tmp_path / "acme.zip")["experiences.jsonl"].replace(b"Canberra", b"Sydney!!")
    damaged = rewrite(tmp_path / "acme.zip", tmp_path / "bad.zip", {"experiences.jsonl": rows})
    sent = client.post("/v1/tenant/import", content=damaged.read_bytes(), headers=_admin(service, "copy"))
    assert sent.status_code == 422
    assert sent.json()["error"]["message"].startswith("the request body, experiences.jsonl: checksum mismatch")
    assert memory.stats("copy").experiences == 0 and not memory.adapters("copy")


def test_the_cli_exports_and_imports_as_another_tenant(tmp_path: Path, embedder: Embedder, capsys: Any) -> None:
    with VectorMemory(tmp_path / "one", embedder=embedder) as memory:
        build_tenant(memory, "acme", tmp_path)
        want = answers(memory, "acme")
    archive = tmp_path / "acme.zip"
    assert main(["--home", str(tmp_path / "one"), "export", "--tenant", "acme", str(archive)]) == 0
    assert zipfile.is_zipfile(archive) and "acme -> " in capsys.readouterr().out
    assert main(["--home", str(tmp_path / "two"), "import", str(archive), "--as", "initech", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tenant"] == "initech" and report["source"] == "acme" and report["added"]["adapters"] == 3
    with VectorMemory(tmp_path / "two", embedder=embedder) as memory:
        assert answers(memory, "initech") == {**want, "served": None}
        assert memory.store.tenants() == ["initech"]
    assert main(["--home", str(tmp_path / "two"), "import", str(tmp_path / "missing.zip")]) == 1
    assert "missing.zip: no such file" in capsys.readouterr().err
