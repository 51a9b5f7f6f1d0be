"""Export and import of a tenant: a round trip answers the same, a second import changes nothing, a damaged archive
is refused before anything is written, a forgotten user is in no later export, tenants stay apart."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from logmem.memory import ArchiveError, Embedder, NotFoundError, VectorMemory
from sqlalchemy import create_engine, text
from tenants import answers, build_tenant, members, rewrite

TABLES = ("interactions", "feedback", "answers", "feedback_events", "experiences", "experience_sources",
          "experience_authors", "retrievals", "conflicts", "instructions", "serving_modes", "adapters", "index_state")


def row_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> dict[str, Any]:
    """A SQLite home with tenant acme built whole and a second tenant, globex; acme's archive and what it answers."""
    root = tmp_path_factory.mktemp("source")
    with VectorMemory(root / "home", embedder=embedder) as memory:
        build_tenant(memory, "acme", root)
        build_tenant(memory, "globex", root, user_b="gus")
        manifest = memory.export_tenant(root / "acme.zip", tenant="acme")
        return {"root": root, "archive": root / "acme.zip", "manifest": manifest, "answers": answers(memory, "acme")}


def test_export_holds_every_kind_of_row_and_the_adapters(source: dict[str, Any]) -> None:
    manifest, files = source["manifest"], members(source["archive"])
    counts = manifest["counts"]
    for table in ("interactions", "feedback", "answers", "feedback_events", "experiences", "experience_sources",
                  "retrievals", "instructions", "serving_modes", "adapters"):
        assert counts[table] > 0, table
    assert manifest["embedder"]["dim"] == 384 and manifest["format"] == "logmem-tenant"
    assert counts["adapters"] == 3 and manifest["left_out"] == []
    assert sorted(n for n in files if n.startswith("adapters/")) == sorted(
        f"adapters/{v}/{f}" for v in ("v1", "v2", "v3") for f in ("adapter_config.json", "adapter_model.safetensors"))
    assert set(manifest["members"]) == set(files) - {"manifest.json"}
    rows = [json.loads(line) for line in files["experiences.jsonl"].splitlines()]
    assert any(r["lesson"] for r in rows) and any(r["rejected"] for r in rows)
    assert manifest["active_adapter"] == "v2"


def test_tenants_stay_apart_in_an_export(source: dict[str, Any]) -> None:
    blob = b"".join(members(source["archive"]).values())
    assert b"globex" not in blob and b"gus" not in blob
    assert b"acme" in blob


@pytest.mark.postgres
def test_sqlite_to_postgresql_and_back_answers_the_same(source: dict[str, Any], tmp_path: Path, embedder: Embedder,
                                                        pg_db: str) -> None:
    with VectorMemory(tmp_path / "pg", embedder=embedder, db_url=pg_db) as pg:
        report = pg.import_tenant(source["archive"])
        assert report.tenant == "acme" and not report.reembedded
        assert answers(pg, "acme") == source["answers"]
        pg.export_tenant(tmp_path / "back.zip", tenant="acme")
    with VectorMemory(tmp_path / "sqlite", embedder=embedder) as back:
        back.import_tenant(tmp_path / "back.zip")
        assert answers(back, "acme") == source["answers"]


def test_import_twice_changes_nothing(source: dict[str, Any], tmp_path: Path, embedder: Embedder) -> None:
    url = f"sqlite:///{tmp_path / 'home' / 'memory.db'}"
    with VectorMemory(tmp_path / "home", embedder=embedder) as memory:
        first = memory.import_tenant(source["archive"])
        before, folders = row_counts(url), sorted((tmp_path / "home" / "adapters").iterdir())
        second = memory.import_tenant(source["archive"])
        assert row_counts(url) == before
        assert sorted((tmp_path / "home" / "adapters").iterdir()) == folders
        assert sum(first.added.values()) > 0 and sum(second.added.values()) == 0
        assert second.kept == {t: n for t, n in source["manifest"]["counts"].items()}
        assert answers(memory, "acme") == source["answers"]


def test_import_as_another_tenant_writes_only_that_tenant(source: dict[str, Any], tmp_path: Path,
                                                          embedder: Embedder) -> None:
    home = tmp_path / "copy"
    import shutil

    shutil.copytree(source["root"] / "home", home)  # a home that holds acme and globex already
    with VectorMemory(home, embedder=embedder) as memory:
        before = {t: answers(memory, t) for t in ("acme", "globex")}
        report = memory.import_tenant(source["archive"], tenant="initech")
        assert report.tenant == "initech" and report.source == "acme"
        assert report.adapters == {"v1": "v7", "v2": "v8", "v3": "v9"}  # the store's next versions
        assert {t: answers(memory, t) for t in ("acme", "globex")} == before
        assert answers(memory, "initech") == {**source["answers"], "served": None}  # served ids are per tenant
        assert all(json.loads(r)["tenant"] == "initech" for r in _records(home, "initech"))


def _records(home: Path, tenant: str) -> list[str]:
    engine = create_engine(f"sqlite:///{home / 'memory.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT record FROM interactions WHERE tenant = :t"), {"t": tenant})
            return list(rows.scalars())
    finally:
        engine.dispose()


def _damaged(archive: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """Archives damaged in each way an import must catch, with the message each must give."""
    files = members(archive)
    data = archive.read_bytes()
    (tmp / "truncated.zip").write_bytes(data[: len(data) * 2 // 3])
    interactions = files["interactions.jsonl"].replace(b"Canberra", b"Sydney!!")
    bad_row = files["experiences.jsonl"].splitlines()
    bad_row[1] = json.dumps({**json.loads(bad_row[1]), "alpha": "lots"}).encode()
    tampered_adapter = bytearray(files["adapters/v2/adapter_model.safetensors"])
    tampered_adapter[-1] ^= 0xFF
    return {
        "truncated": (tmp / "truncated.zip", "not a zip archive, or truncated"),
        "tampered row": (rewrite(archive, tmp / "t1.zip", {"interactions.jsonl": interactions}),
                         "interactions.jsonl: checksum mismatch"),
        "tampered weights": (rewrite(archive, tmp / "t2.zip", {"adapters/v2/adapter_model.safetensors":
                                                               bytes(tampered_adapter)}),
                             "adapters/v2/adapter_model.safetensors: checksum mismatch"),
        "member removed": (rewrite(archive, tmp / "t3.zip", {"vectors.npy": None}),
                           "vectors.npy: listed in the manifest but missing"),
        "member added": (rewrite(archive, tmp / "t4.zip", {"extra.jsonl": b"{}\n"}),
                         "extra.jsonl: not listed in the manifest"),
        "no manifest": (rewrite(archive, tmp / "t5.zip", {"manifest.json": None}), "manifest.json: missing"),
        "bad field, checksums forged": (rewrite(archive, tmp / "t6.zip", {"experiences.jsonl": b"\n".join(bad_row)
                                                                          + b"\n"}, fix_manifest=True),
                                        "experiences.jsonl, line 2, field 'alpha': expected int or float"),
    }


def test_a_damaged_archive_is_refused_before_anything_is_written(source: dict[str, Any], tmp_path: Path,
                                                                 embedder: Embedder) -> None:
    home = tmp_path / "home"
    with VectorMemory(home, embedder=embedder) as memory:
        before = row_counts(f"sqlite:///{home / 'memory.db'}")
        for case, (path, message) in _damaged(source["archive"], tmp_path).items():
            with pytest.raises(ArchiveError, match=message.replace("(", r"\(")) as caught:
                memory.import_tenant(path)
            assert str(path) in str(caught.value), case
            assert row_counts(f"sqlite:///{home / 'memory.db'}") == before, case
            assert not (home / "adapters").exists() or not any((home / "adapters").iterdir()), case


def test_a_forgotten_user_is_in_no_later_export(tmp_path: Path, embedder: Embedder) -> None:
    with VectorMemory(tmp_path / "home", embedder=embedder) as memory:
        build_tenant(memory, "acme", tmp_path, user_b="zebedee")
        memory.forget(user="zebedee", tenant="acme")
        manifest = memory.export_tenant(tmp_path / "after.zip", tenant="acme")
    blob = b"".join(members(tmp_path / "after.zip").values())
    assert b"zebedee" not in blob
    # the answers only that user gave ("Canberra.", "6379."): the port as a number of its own, not four digits of a
    # timestamp (1765136379.2) or of a hex digest, which a row's creation time and hashes give by chance
    assert b"Canberra" not in blob and re.search(rb"(?<![0-9a-f])6379\.(?![0-9])", blob) is None
    # the adapters whose weights hold the forgotten experiences stay behind, with the reason in the manifest
    assert {a["version"] for a in manifest["left_out"]} == {"v2", "v3"}
    assert all("forgotten" in a["reason"] for a in manifest["left_out"])
    assert [json.loads(r)["version"] for r in members(tmp_path / "after.zip")["adapters.jsonl"].splitlines()] == ["v1"]


class Doubled:
    """Another embedder (another name and width) whose cosines equal the given one's: each vector twice, over
    sqrt(2). An archive of the given one must be re-embedded with it, and then answers the same."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return f"{self.inner.name}-doubled"

    @property
    def dim(self) -> int:
        return 2 * self.inner.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        xb = self.inner.encode(texts)
        return (np.hstack([xb, xb]) / np.sqrt(2.0)).astype(np.float32)


def test_another_embedder_re_embeds_or_is_refused(source: dict[str, Any], tmp_path: Path, embedder: Embedder) -> None:
    home = tmp_path / "home"
    with VectorMemory(home, embedder=Doubled(embedder)) as memory:
        with pytest.raises(ArchiveError, match=r"manifest.json, field 'embedder': its vectors come from embedder"):
            memory.import_tenant(source["archive"], reembed=False)
        assert row_counts(f"sqlite:///{home / 'memory.db'}")["experiences"] == 0
        report = memory.import_tenant(source["archive"])
        assert report.reembedded
        got, want = answers(memory, "acme"), source["answers"]
        for q, hits in want["hits"].items():  # float32 sums in another width: scores agree to 1e-5
            assert [h[:-1] for h in got["hits"][q]] == [h[:-1] for h in hits]
            assert np.allclose([h[-1] for h in got["hits"][q]], [h[-1] for h in hits], atol=1e-5)
        assert {k: v for k, v in got.items() if k != "hits"} == {k: v for k, v in want.items() if k != "hits"}


def test_an_empty_tenant_is_not_exported(tmp_path: Path, embedder: Embedder) -> None:
    with VectorMemory(tmp_path / "home", embedder=embedder) as memory:
        with pytest.raises(NotFoundError, match="tenant 'nobody' holds no interactions"):
            memory.export_tenant(tmp_path / "x.zip", tenant="nobody")
    assert not (tmp_path / "x.zip").exists()
