"""The engine and transactions every part of the store works through."""

from __future__ import annotations

import logging
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, insert
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from ..errors import StoreError
from .schema import EVERY_EXPERIENCE, Base, ExperienceChangeRow, ExperienceVersionRow
from .sql import bump_counter

logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_STATES = ("40P01", "40001")  # PostgreSQL: deadlock detected, serialization failure
TOUCHED = "logmem_touched"  # a transaction's info: tenant -> the experience ids it changed (`StoreBase.touched`)


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
        self._own = _OwnConnection(self.engine)
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

    def driver_rows(self, sql: str, params: tuple[Any, ...], *, held: bool = False) -> list[tuple[Any, ...]]:
        """The rows of a read given in the driver's own SQL (`driver_sql`), through a cursor of the process's own
        connection (`_OwnConnection`; a pooled one while another thread uses it): no compiling, no row objects, no
        pool (a search's reads, every request, cost ~3x less than as Core selects, and the pool's checkout and
        reset were ~2/3 of what was left), and nothing but plain driver values back. `held`: under SQLite, the
        rows of the same read are answered from the process while no connection has committed since (a read of
        what every request asks, such as a tenant's stamp)."""
        got = self._own.rows(sql, params, held=held)
        if got is not None:
            return got
        with self.engine.connect() as c:
            return _fetch(c.connection, sql, params)

    def quote(self, name: str) -> str:
        """A column or table name as the dialect quotes it (`user` and `trigger` are reserved words)."""
        return str(self.engine.dialect.identifier_preparer.quote(name))

    def ping(self) -> None:
        """Raise unless the database answers."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        self._own.close()
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
        version of each tenant whose experiences it `touched` goes up by one, and the ids it touched are logged
        under the new version (last, so that the counter's row lock is held for the commit alone: a transaction
        waiting for it holds every row lock it needs already)."""
        with Session(self.engine, expire_on_commit=False) as tx:
            with tx.begin():
                yield tx
                touched: dict[str, set[int]] = tx.info.pop(TOUCHED, {})
                for tenant in sorted(touched):
                    version = bump_counter(tx, ExperienceVersionRow, {"tenant": tenant}, "version")
                    ids = sorted(touched[tenant])
                    for start in range(0, len(ids), 5_000):
                        tx.execute(insert(ExperienceChangeRow), [
                            {"tenant": tenant, "version": version, "experience_id": i}
                            for i in ids[start:start + 5_000]])

    @staticmethod
    def touched(tx: Session, *, tenant: str, ids: Iterable[int] | None) -> None:
        """Note that `tx` changes what a search reads of the tenant's experiences `ids` (None: all of them), rows
        gone included; its commit bumps the tenant's version and logs the ids (`transaction`). No ids: nothing."""
        marked = tx.info.setdefault(TOUCHED, {}).setdefault(tenant, set())
        if ids is None:
            marked.add(EVERY_EXPERIENCE)
        else:
            marked.update(int(i) for i in ids)
        if not marked:
            del tx.info[TOUCHED][tenant]

    @contextmanager
    def _reader(self, tx: Session | None) -> Iterator[Session]:
        if tx is not None:
            yield tx
        else:
            with Session(self.engine) as s:
                yield s


def _fetch(connection: Any, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    cursor = connection.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


WAL_HEADERS = 96  # the two copies of the wal-index header at the start of a `-shm` file


def _wal_index(conn: Any) -> mmap.mmap | None:
    """The `-shm` file of SQLite connection `conn`'s database, mapped read-only, when it is in WAL mode (None: not
    in WAL mode, in memory, or the file cannot be mapped: `PRAGMA data_version` then)."""
    try:
        conn.execute("PRAGMA data_version").fetchone()  # a read: the wal-index exists and is current from here on
        if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            return None
        path = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
        if not path:
            return None
        with open(f"{path}-shm", "rb") as fh:
            return mmap.mmap(fh.fileno(), WAL_HEADERS, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        logger.debug("the wal-index cannot be mapped (%s): commits are seen through PRAGMA data_version", exc)
        return None


class _OwnConnection:
    """A connection of this process's own, outside the pool, for the small reads every request makes: it reads
    outside any transaction (autocommit), so each read sees what is committed when it runs. One thread at a time
    (the others take a pooled connection); a forked child opens its own; a connection the server dropped is
    replaced at the next read.

    Under SQLite it also holds the answers of `held` reads while no connection, in any process, has committed since:
    in WAL mode, while both copies of the wal-index header in the `-shm` file (which every commit rewrites: its
    change counter, last frame and checksums; https://www.sqlite.org/walformat.html, "The WAL-Index Header") read as
    they did before the held read, mapped into this process (~1 us; the file stays while this connection is open);
    else while `PRAGMA data_version` has not moved (~50 us cold: a read transaction begun and ended)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._lock = threading.Lock()
        self._fairy: Any = None  # the pool's wrapper, detached from it: kept with the connection it wraps
        self._conn: Any = None  # the driver's connection
        self._pid = 0
        self._data_version: int | bytes | None = None
        self._shm: mmap.mmap | None = None  # the wal-index, mapped read-only (SQLite in WAL mode)
        self._held: dict[tuple[str, tuple[Any, ...]], list[tuple[Any, ...]]] = {}

    def rows(self, sql: str, params: tuple[Any, ...], *, held: bool) -> list[tuple[Any, ...]] | None:
        """The read's rows, or None while another thread uses the connection or when it failed."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            try:
                conn = self._connection()
                if not self.sqlite:
                    return _fetch(conn, sql, params)
                version = (self._shm[:WAL_HEADERS] if self._shm is not None
                           else conn.execute("PRAGMA data_version").fetchone()[0])
                if version != self._data_version:
                    self._held.clear()
                    self._data_version = version
                key = (sql, params)
                got = self._held.get(key) if held else None
                if got is None:
                    got = _fetch(conn, sql, params)
                    if held:
                        self._held[key] = got
                return got
            except Exception as exc:  # a connection the server dropped, or a bad read: this one goes, and the read
                logger.debug("the process's own connection failed (%s): the read goes through the pool", exc)
                self._drop()  # is asked again of a pooled connection, which raises a bad read's error itself
                return None
        finally:
            self._lock.release()

    def _connection(self) -> Any:
        if self._conn is None or self._pid != os.getpid():
            fairy = self.engine.raw_connection()  # opened as the pool opens them (SQLite's pragmas)
            driver: Any = fairy.driver_connection
            fairy.detach()
            driver.rollback()  # no transaction left open (the dialect's first queries may have begun one)
            if not self.sqlite:
                driver.autocommit = True  # each read sees the latest commit, and none holds a snapshot open
            self._fairy, self._conn, self._pid, self._data_version = fairy, driver, os.getpid(), None
            self._held.clear()
            if self.sqlite:
                self._shm = _wal_index(driver)
        return self._conn

    def _drop(self) -> None:
        conn, self._fairy, self._conn, self._data_version = self._conn, None, None, None
        self._held.clear()
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        if conn is not None and self._pid == os.getpid():
            try:
                conn.close()  # the driver's own (the pool would log a closed one's failed reset as an error)
            except Exception:  # already broken: nothing more to release
                pass

    def close(self) -> None:
        with self._lock:
            self._drop()
