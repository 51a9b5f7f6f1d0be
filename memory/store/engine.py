"""The engine and transactions every part of the store works through."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from ..errors import StoreError
from .schema import Base, ExperienceVersionRow
from .sql import bump_counter

T = TypeVar("T")
RETRY_STATES = ("40P01", "40001")  # PostgreSQL: deadlock detected, serialization failure
TOUCHED = "logmem_touched"  # a transaction's info: the tenants whose experiences it changed (`StoreBase.touched`)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA secure_delete=ON")  # deleted text is overwritten, not left in free pages
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _unreachable(url: URL, exc: OperationalError) -> str:
    """One line for a database that cannot be opened: where (host:port or file, never the password), why (the
    driver's first line), what to check."""
    why = (str(exc.orig).strip().splitlines() or ["no reason given"])[0]
    if url.get_backend_name() == "sqlite":
        return f"cannot open the SQLite database {url.database}: {why}; does its folder exist, may this user write it?"
    where = f"{url.host}:{url.port}" if url.port else f"{url.host} (the driver's default port)"
    return f"cannot reach the {url.get_backend_name()} database at {where}: {why}; is the server running there?"


class StoreBase:
    """The database: engine, schema, transactions."""

    def __init__(self, url: str) -> None:
        """Raises StoreError, naming where and never the password, for a URL that is not one, a driver that is
        not installed, or a database that cannot be reached or opened."""
        self.url = url
        try:
            self.engine: Engine = create_engine(url)
        except ArgumentError as exc:  # its message never repeats the URL (nor a password in it)
            raise StoreError(f"not a database URL: {exc}; expected dialect+driver://..., such as "
                             "sqlite:///path/memory.db or postgresql+psycopg://user:password@host:5432/name") from exc
        except ImportError as exc:
            raise StoreError(f"the database URL's driver is not installed: {exc}") from exc
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            Base.metadata.create_all(self.engine)
        except OperationalError as exc:
            self.engine.dispose()
            raise StoreError(_unreachable(self.engine.url, exc)) from exc

    def driver_sql(self, sql: str) -> str:
        """`sql`, written with `?` for each parameter, in the driver's own paramstyle, for `exec_driver_sql`:
        SQLAlchemy compiles nothing then (on a search, compiling took twice what SQLite took to answer)."""
        style = self.engine.dialect.dbapi.paramstyle if self.engine.dialect.dbapi else "qmark"
        if style == "qmark":
            return sql
        if style in ("format", "pyformat"):
            return sql.replace("%", "%%").replace("?", "%s")
        raise StoreError(f"the database driver's paramstyle {style!r} is not supported: use sqlite or psycopg")

    def driver_rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of a read given in the driver's own SQL (`driver_sql`), through a pooled connection's
        cursor: no compiling and no row objects (a search's reads, every request, cost ~3x less than as Core
        selects), and nothing but plain driver values back."""
        with self.engine.connect() as c:
            cursor = c.connection.cursor()
            try:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
            finally:
                cursor.close()

    def quote(self, name: str) -> str:
        """A column or table name as the dialect quotes it (`user` and `trigger` are reserved words)."""
        return str(self.engine.dialect.identifier_preparer.quote(name))

    def ping(self) -> None:
        """Raise unless the database answers."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        self.engine.dispose()

    def retry_on_conflict(self, work: Callable[[], T], *, attempts: int = 2) -> T:
        """`work()` (which opens its own transaction), run again when another writer committed a row with the same
        unique key first (two servers given the same record at once: the next attempt sees that row), or when
        PostgreSQL chose this transaction as a deadlock's or a serialization conflict's victim."""
        for attempt in range(attempts):
            try:
                return work()
            except (IntegrityError, OperationalError) as exc:
                retryable = isinstance(exc, IntegrityError) or getattr(exc.orig, "sqlstate", None) in RETRY_STATES
                if attempt == attempts - 1 or not retryable:
                    raise
        raise AssertionError("unreachable")

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One atomic unit of work: committed on success, rolled back on any exception. Just before it commits, the
        version of each tenant whose experiences it `touched` goes up by one (last, so that the counter's row lock
        is held for the commit alone: a transaction waiting for it holds every row lock it needs already)."""
        with Session(self.engine, expire_on_commit=False) as tx:
            with tx.begin():
                yield tx
                for tenant in sorted(tx.info.pop(TOUCHED, ())):
                    bump_counter(tx, ExperienceVersionRow, {"tenant": tenant}, "version")

    @staticmethod
    def touched(tx: Session, *, tenant: str) -> None:
        """Note that `tx` changes what a search reads of the tenant's experiences (not their vectors: those bump the
        generation); its commit bumps the tenant's version (`transaction`)."""
        tx.info.setdefault(TOUCHED, set()).add(tenant)

    @contextmanager
    def _reader(self, tx: Session | None) -> Iterator[Session]:
        if tx is not None:
            yield tx
        else:
            with Session(self.engine) as s:
                yield s
