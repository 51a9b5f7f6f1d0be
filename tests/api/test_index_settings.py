"""The service's settings choose the memory's index (LOGMEM_INDEX_KIND, LOGMEM_SHARED_INDEX)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from logmem.api.runtime import Runtime
from logmem.api.settings import Settings
from pydantic import ValidationError


def test_the_index_kind_comes_from_the_environment(tmp_path: Path, embedder: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGMEM_INDEX_KIND", "hnsw_sq8")
    monkeypatch.setenv("LOGMEM_SHARED_INDEX", "true")
    runtime = Runtime(Settings(home=tmp_path / "home", worker=False), embedder=embedder)
    try:
        config = runtime.memory.config
        assert (config.index_kind, config.shared_index) == ("hnsw_sq8", True)
        assert runtime.memory.indexes.kind == "hnsw_sq8"  # shared_index changes only what auto chooses
    finally:
        runtime.memory.close()


def test_an_unknown_index_kind_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGMEM_INDEX_KIND", "ivf")
    with pytest.raises(ValidationError, match="index_kind"):
        Settings()
