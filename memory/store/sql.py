"""The small SQL helpers the store's parts share: matched row counts, row locks, JSON for metrics columns."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.orm import Session


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (`Session.execute` is typed as returning the generic Result)."""
    return int(cast("CursorResult[Any]", result).rowcount)


def plain(value: Any) -> Any:
    """JSON for NumPy scalars and arrays in metrics (`float32(0.8)`, `array([...])`)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def locked(tx: Session, model: type[Any], key: Any) -> Any:
    """The row `key` of `model` re-read and locked until commit (SELECT ... FOR UPDATE; SQLite needs no row
    lock, one writer holds the whole file), so that a read-modify-write cannot overwrite another
    process's concurrent change with a stale value under PostgreSQL's read committed."""
    return tx.get(model, key, with_for_update=True, populate_existing=True)


def upsert_dialect(tx: Session) -> Any:
    """The SQLAlchemy dialect module whose `insert` has `ON CONFLICT` clauses for `tx`'s database (PostgreSQL,
    SQLite), or None for another database."""
    return {"postgresql": postgresql, "sqlite": sqlite}.get(tx.get_bind().dialect.name)


def created_locked(tx: Session, model: type[Any], values: dict[str, Any]) -> Any:
    """The row of `model` whose primary key is in `values`, inserted with `values` when absent, then locked
    as `locked` does. The insert is `ON CONFLICT DO NOTHING`, so two transactions that create the same row
    at once (two processes writing a new tenant's first rows) wait for each other instead of one failing
    on the unique key."""
    dialect = upsert_dialect(tx)
    key = tuple(values[c.name] for c in model.__table__.primary_key.columns)
    if dialect is not None:
        tx.execute(dialect.insert(model).values(**values).on_conflict_do_nothing())
    elif tx.get(model, key) is None:  # another dialect: no portable upsert, the plain check-then-add
        tx.add(model(**values))
        tx.flush()
    return locked(tx, model, key)


def bump_counter(tx: Session, model: type[Any], key: dict[str, Any], column: str) -> int:
    """Add one to `column` of the row of `model` whose primary key is `key`, inserting it at 1 when absent: one
    statement (`ON CONFLICT DO UPDATE`), which locks the row until commit under PostgreSQL. Returns the new value."""
    dialect = upsert_dialect(tx)
    if dialect is None:  # another dialect: no portable upsert
        row = created_locked(tx, model, {**key, column: 0})
        setattr(row, column, getattr(row, column) + 1)
        tx.flush()
        return int(getattr(row, column))
    counter = getattr(model, column)
    return int(tx.execute(dialect.insert(model).values(**key, **{column: 1})
                          .on_conflict_do_update(index_elements=list(key), set_={column: counter + 1})
                          .returning(counter)).scalar_one())
