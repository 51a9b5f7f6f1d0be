"""Throwaway databases on a real PostgreSQL server, for fixtures of any scope."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fresh_database(pg_url: str) -> Iterator[str]:
    """The URL of a fresh, empty database on the `pg_url` server, dropped at the end of the block."""
    from sqlalchemy import create_engine, make_url, text

    name = f"logmem_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")  # CREATE/DROP DATABASE refuse a transaction
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                # Connections a test left open must not keep the database alive. Not DROP ... WITH (FORCE):
                # for a role that is not superuser it refuses when an autovacuum worker happens to be in the
                # database; a plain DROP stops autovacuum itself, and our own sessions we may end.
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                  " WHERE datname = :name AND usename = current_user AND pid <> pg_backend_pid()"),
                             {"name": name})
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()
