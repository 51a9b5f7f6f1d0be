"""The key cache: a live key is trusted for `key_cache_seconds` without asking SQL again; a revocation made
through the serving process applies at once, one made by another process within that time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from logmem.api.runtime import Caller
from logmem.memory.store import Store


def test_a_key_revoked_by_another_process_stops_working_once_the_cache_expires(tmp_path: Path,
                                                                                  runtime_for: Any) -> None:
    runtime = runtime_for(tmp_path / "home", key_cache_seconds=1.0)
    key, record = runtime.store.create_key(tenant="acme")
    assert runtime.authenticate(key) == Caller("acme", record.id)
    Store(runtime.settings.db_url).revoke_key(key_id=record.id)  # another process's view of the same database
    assert runtime.authenticate(key) == Caller("acme", record.id)  # still trusted from the cache ...
    time.sleep(1.1)
    assert runtime.authenticate(key) is None  # ... and refused once it expired
    runtime.close()


def test_with_no_cache_a_revocation_anywhere_applies_at_once(tmp_path: Path, runtime_for: Any) -> None:
    runtime = runtime_for(tmp_path / "home", key_cache_seconds=0)
    key, record = runtime.store.create_key(tenant="acme")
    assert runtime.authenticate(key) == Caller("acme", record.id)
    Store(runtime.settings.db_url).revoke_key(key_id=record.id)
    assert runtime.authenticate(key) is None
    runtime.close()


def test_a_revocation_through_the_serving_store_applies_at_once_despite_the_cache(tmp_path: Path,
                                                                                   runtime_for: Any) -> None:
    runtime = runtime_for(tmp_path / "home", key_cache_seconds=3600)
    key, record = runtime.store.create_key(tenant="acme")
    other, _ = runtime.store.create_key(tenant="globex")
    assert runtime.authenticate(key) is not None and runtime.authenticate(other) is not None
    runtime.store.revoke_key(key_id=record.id)
    assert runtime.authenticate(key) is None
    assert runtime.authenticate(other) is not None  # the others still work
    assert runtime.authenticate("lm-not-a-key") is None
    runtime.close()
