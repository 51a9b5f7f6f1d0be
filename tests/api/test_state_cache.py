"""What serves a tenant (its active adapter, its serving mode) is read from SQL once and trusted for
`state_cache_seconds`: a change made through the same store is seen at once, one made by another process within
that bound (tested with a real server process and this process's own store)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import lora, start_upstream
from logmem.memory.store import Store

BOUND = 1.0  # the server's state_cache_seconds


def _register(store: Store, tenant: str, folder: Path) -> str:
    return store.add_adapter(tenant=tenant, base_model="tiny", method="sft", seed=0, status="promoted", metrics={},
                             covered=[], path=str(folder))


def test_a_store_trusts_the_state_it_read_until_it_changes_it_or_the_bound_passes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'memory.db'}"
    mine, other = Store(url), Store(url)  # `other` stands for another process: it shares no cache with `mine`
    try:
        mine.state_cache_seconds = 2.0  # (a loaded CI machine took over 0.5 s for the other store's two writes)
        v1 = _register(mine, "acme", tmp_path / "a1")
        assert other.active_adapter(tenant="acme") is None  # its connection opened before the bound's window
        assert mine.active_adapter(tenant="acme") is None and mine.serving_mode(tenant="acme") is None
        mine.activate_adapter(tenant="acme", version=v1)  # through this store: seen at once
        assert mine.active_adapter(tenant="acme").version == v1
        mine.pin_serving_mode(tenant="acme", mode="vote")
        assert mine.serving_mode(tenant="acme").pinned == "vote"
        assert mine.active_adapter(tenant="acme").version == v1  # (a write drops every tenant's: read again)
        other.rollback_adapter(tenant="acme")  # another writer: trusted state until the bound passes
        other.pin_serving_mode(tenant="acme", mode=None)
        assert mine.active_adapter(tenant="acme").version == v1
        assert mine.serving_mode(tenant="acme").pinned == "vote"
        time.sleep(2.1)
        assert mine.active_adapter(tenant="acme") is None
        assert mine.serving_mode(tenant="acme").pinned is None
        assert other.active_adapter(tenant="acme") is None  # a store's default (0) reads SQL every time
    finally:
        mine.close()
        other.close()


@pytest.mark.slow
def test_a_server_sees_another_process_change_within_the_bound(tmp_path: Path, tiny_folder: Path,
                                                                 wordy_lm: tuple[Any, Any]) -> None:
    home = tmp_path / "home"
    server, _ = start_upstream(home, tiny_folder, tmp_path / "server.log", LOGMEM_STATE_CACHE_SECONDS=str(BOUND))
    store = Store(f"sqlite:///{home / 'memory.db'}")  # this process: another writer
    key = store.create_key(tenant="acme")[0]
    try:
        with httpx.Client(base_url=f"{server.url}/v1", headers={"Authorization": f"Bearer {key}"},
                          timeout=60) as client:
            def served() -> dict[str, Any]:
                return client.get("/memory/stats").raise_for_status().json()["serving_mode"]

            assert served()["adapter"] is None
            version = _register(store, "acme", lora(wordy_lm[0], 1, tmp_path / "adapter"))
            activated = client.post(f"/adapters/{version}/activate")
            assert activated.status_code == 200, activated.text
            assert served()["adapter"] == version  # changed through the server: at once
            store.rollback_adapter(tenant="acme")  # changed by this process
            changed_at, seen_at = time.monotonic(), None
            while time.monotonic() - changed_at < BOUND + 5:
                if served()["adapter"] is None:
                    seen_at = time.monotonic()
                    break
                time.sleep(0.05)
            assert seen_at is not None and seen_at - changed_at <= BOUND + 0.5  # within the bound (and one request)
    finally:
        store.close()
        server.stop()
