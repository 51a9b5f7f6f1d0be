"""Adapters every home sharing a database server can read: with PostgreSQL an adapter's files are kept in the
database with its row, and a home on another host (no shared folder) writes its own copy on first use and answers
with it; with SQLite the folder alone holds them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import lora, make_runtime
from logmem.api.answering import Caller

ACME = Caller("acme", None, admin=True)
QUESTION = [{"role": "user", "content": "Which colour is the sky?"}]


def _records(n: int = 6) -> list[dict[str, Any]]:
    return [{"id": f"c{i}", "user": f"u{i}", "messages": [{"role": "user", "content": f"Which colour is thing {i}?"},
                                                          {"role": "assistant", "content": "BLUE"}],
             "feedback": [{"turn": 1, "kind": "like"}]} for i in range(n)]


@pytest.mark.postgres
def test_a_home_without_the_folder_answers_with_the_adapter_another_home_registered(
        tmp_path: Path, pg_db: str, embedder: Any, wordy_lm: tuple[Any, Any]) -> None:
    trainer = make_runtime(tmp_path / "home2", embedder, wordy_lm, db=pg_db)  # the GPU host's worker, say
    server = make_runtime(tmp_path / "home1", embedder, wordy_lm, db=pg_db)
    try:
        trainer.ingest(_records(), tenant="acme")
        covered = [e.id for e in trainer.memory.iter_experiences("acme")]
        folder = lora(wordy_lm[0], 7, tmp_path / "home2" / "adapters" / "acme-job")
        version = trainer.memory.register_adapter(tenant="acme", base_model=trainer.base_model, method="sft", seed=0,
                                                  promoted=True, metrics={}, covered=covered, path=str(folder))
        trainer.activate(ACME, version)
        want = trainer.chat(ACME, QUESTION, max_tokens=6)
        base = trainer.chat(ACME, QUESTION, model=trainer.base_model, max_tokens=6)
        assert want.adapter == version and want.reply.text != base.reply.text  # the adapter changes the answer
        shutil.rmtree(folder)  # the server's host has no such folder: only the database holds the weights

        got = server.chat(ACME, QUESTION, max_tokens=6)
        assert (got.adapter, got.reply.text) == (version, want.reply.text)
        copy = Path(server.active_adapter(ACME).path)
        assert copy.parent == tmp_path / "home1" / "adapters" and (copy / "adapter_model.safetensors").is_file()
        assert json.loads((copy / "adapter_config.json").read_text())["r"] == 4

        server.forget(None, user="u0")  # erasure reaches the weights: stale for every home
        assert [a.status for a in trainer.memory.adapters("acme")] == ["stale"]
        assert [a.status for a in server.memory.adapters("acme")] == ["stale"]
        server.memory.erase_adapter_weights(version, tenant="acme")  # as the next promoted job does
        assert not copy.exists() and server.memory.store.adapter_files(version=version) == {}
    finally:
        trainer.close()
        server.close()


def test_with_sqlite_the_folder_alone_holds_an_adapter(tmp_path: Path, embedder: Any,
                                                       wordy_lm: tuple[Any, Any]) -> None:
    runtime = make_runtime(tmp_path / "home", embedder, wordy_lm)
    try:
        folder = lora(wordy_lm[0], 8, tmp_path / "home" / "adapters" / "acme-job")
        version = runtime.memory.register_adapter(tenant="acme", base_model=runtime.base_model, method="sft", seed=0,
                                                  promoted=True, metrics={}, covered=[], path=str(folder))
        assert runtime.memory.store.adapter_files(version=version) == {}
        assert runtime.memory.store.get_adapter(version=version).path == str(folder)
    finally:
        runtime.close()
