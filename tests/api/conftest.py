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
from logmem.memory.store import Store
from servers import ServerProcess

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


# --- an OpenAI-compatible upstream: a second, real logmem server process in local mode --------------------------
UPSTREAM_ADMIN = "upstream-admin-secret"  # the upstream's admin key (loads and unloads LoRA adapters)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, wordy_lm: tuple[Any, Any]) -> Path:
    """The session's tiny (wordy) model saved as a model folder, which a server process loads by path."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    model, tokenizer = wordy_lm
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def start_upstream(home: Path, model: Path, log: Path, **env: str) -> tuple[ServerProcess, str]:
    """`uvicorn logmem.api.app:create_app --factory` over `model` (float32, CPU, no job worker), with a key of
    tenant `proxy` for the proxy to call it with; returns the started server and that key."""
    home.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{home / 'memory.db'}")
    try:
        key = store.create_key(tenant="proxy")[0]
    finally:
        store.close()
    server = ServerProcess({"LOGMEM_HOME": str(home), "LOGMEM_MODEL": str(model), "LOGMEM_DTYPE": "float32",
                            "LOGMEM_DEVICE": "cpu", "LOGMEM_WORKER": "false", "LOGMEM_ADMIN_KEY": UPSTREAM_ADMIN,
                            "LOGMEM_MAX_TOKENS": "4096", **env}, log)
    return server.start(), key


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory, tiny_folder: Path) -> Iterator[dict[str, Any]]:
    """One upstream process over the tiny model for the session: {"server", "url" (with /v1), "key"}."""
    folder = tmp_path_factory.mktemp("upstream")
    server, key = start_upstream(folder / "home", tiny_folder, folder / "server.log")
    try:
        yield {"server": server, "url": f"{server.url}/v1", "key": key}
    finally:
        server.stop()


def lora(base: Any, seed: int, folder: Path) -> Path:
    """A random LoRA adapter over `base` (its B matrices not zero, so it changes the answers), saved as PEFT does."""
    import torch
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                               init_lora_weights=False))
    model.save_pretrained(folder)
    return folder
