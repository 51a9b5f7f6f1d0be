"""The service on the real memory (real embedder, faiss, SQLite) and a tiny real-tokenizer model."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from logmem.api.app import create_app
from logmem.api.runtime import Runtime
from logmem.api.settings import Settings

SKY = "What colour is the sky on Mars at noon?"
PORT = "Which port does Redis use by default?"


def make_runtime(home: Path, embedder: Any, lm: tuple[Any, Any], **settings: Any) -> Runtime:
    """A runtime over `home` serving a private copy of `lm` (so adapters loaded into it stay in this test)."""
    model, tokenizer = lm
    fields = {"home": home, "worker": False, **settings}
    return Runtime(Settings(**fields), embedder=embedder,
                   load_model=lambda: (copy.deepcopy(model), tokenizer),
                   load_trainer=lambda: (copy.deepcopy(model), tokenizer))


@pytest.fixture
def runtime_for(embedder: Any, wordy_lm: tuple[Any, Any]) -> Any:
    """`runtime_for(home, **settings)`: `make_runtime` with the session's embedder and tiny (wordy) model."""
    return lambda home, **settings: make_runtime(home, embedder, wordy_lm, **settings)


@pytest.fixture
def service(tmp_path: Path, embedder: Any, wordy_lm: tuple[Any, Any]) -> Iterator[dict[str, Any]]:
    """A TestClient over the app, with keys of tenants acme and globex (and an admin key)."""
    runtime = make_runtime(tmp_path / "home", embedder, wordy_lm, admin_key="admin-secret")
    acme, _ = runtime.store.create_key(tenant="acme")
    globex, _ = runtime.store.create_key(tenant="globex")
    with TestClient(create_app(runtime=runtime)) as client:
        yield {"client": client, "runtime": runtime, "acme": {"Authorization": f"Bearer {acme}"},
               "globex": {"Authorization": f"Bearer {globex}"},
               "admin": {"Authorization": "Bearer admin-secret"}}
