"""A tenant's rows read whole and written whole: what an export holds and an import writes (`memory/archive.py` holds
the archive around them).

Rows leave with their own ids, which only link them to each other inside an archive. An import maps those ids to the
ids it finds or makes: a row already present is recognised by its key (an interaction by its id, an experience by its
content hash, an adapter by its creation time, method, seed and base model, an instruction by its hash) and kept as it
is, with the rows that hang off it; so importing an archive twice changes nothing. Ids held inside JSON (the
experiences a served answer used, an adapter's coverage) are mapped too; one that names nothing here is dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Boolean, Float, Integer, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from .engine import StoreBase
from .records import AdapterData
from .schema import (
    AdapterRow,
    AnswerRow,
    AuthorRow,
    ConflictRow,
    ExperienceRow,
    FeedbackEventRow,
    FeedbackRow,
    InstructionRow,
    InteractionRow,
    RetrievalRow,
    ServingModeRow,
    SourceRow,
)

# archive name -> table, in the order an import writes them (a row after the rows it links)
TABLES: dict[str, Any] = {
    "experiences": ExperienceRow, "interactions": InteractionRow, "feedback": FeedbackRow, "answers": AnswerRow,
    "feedback_events": FeedbackEventRow, "experience_sources": SourceRow, "experience_authors": AuthorRow,
    "retrievals": RetrievalRow, "conflicts": ConflictRow, "instructions": InstructionRow,
    "serving_modes": ServingModeRow, "adapters": AdapterRow}
LEFT_OUT = frozenset({"tenant", "vector", "path"})  # the importer's tenant; vectors and weights travel apart
UNLINKED = frozenset({"feedback", "conflicts"})  # tables whose own id links nothing: it stays behind
JSON_COLUMNS: dict[str, type] = {"record": dict, "served": dict, "metrics": dict, "covered": list, "holdout": list,
                                 "figures": dict}  # text columns holding JSON: archived as JSON values
BY_INTERACTION = frozenset({"feedback", "answers", "feedback_events", "retrievals"})  # tenant from the interaction


def columns(name: str) -> tuple[str, ...]:
    """The columns the archive holds of table `name`, in the table's order."""
    return tuple(c.name for c in TABLES[name].__table__.columns
                 if c.name not in LEFT_OUT and not (c.name == "id" and name in UNLINKED))


def column_kinds(name: str) -> dict[str, tuple[type | tuple[type, ...], bool]]:
    """Per archived column of table `name`: (the JSON type(s) its values take, whether it may be null)."""
    kinds: dict[str, tuple[type | tuple[type, ...], bool]] = {}
    table = TABLES[name].__table__
    for column in columns(name):
        c = table.c[column]
        kind: type | tuple[type, ...] = (JSON_COLUMNS[column] if column in JSON_COLUMNS else bool
                                         if isinstance(c.type, Boolean) else int if isinstance(c.type, Integer)
                                         else (int, float) if isinstance(c.type, Float) else str)
        kinds[column] = (kind, bool(c.nullable) and not c.primary_key)
    return kinds


@dataclass
class TenantRows:
    """A tenant's rows as an archive holds them: per table, its rows (archived columns only, JSON columns as values);
    the experiences' vectors in their order; where each adapter's weights are (by version)."""

    tables: dict[str, list[dict[str, Any]]]
    vectors: np.ndarray  # float32, (n experiences, d)
    adapter_paths: dict[str, str] = field(default_factory=dict)


@dataclass
class Written:
    """What an import wrote: rows added and rows found already present, per table; the new experiences' ids and
    vectors (for the index); the archive's adapter versions -> this store's."""

    added: dict[str, int]
    kept: dict[str, int]
    experience_ids: np.ndarray  # int64, (n,)
    vectors: np.ndarray  # float32, (n, d)
    versions: dict[str, str]


class TransferStore(StoreBase):
    """A tenant read whole (an export's snapshot) and written whole (an import, in the caller's transaction)."""

    if TYPE_CHECKING:  # AdapterStore's, beside this one in `Store`
        def adapters(self, *, tenant: str | None) -> list[AdapterData]: ...

        def _here(self, adapter: AdapterData, *, write: bool = True) -> AdapterData: ...

    def read_tenant(self, *, tenant: str, d: int) -> TenantRows:
        """Every row of `tenant` as one snapshot: one read transaction (PostgreSQL: repeatable read), so an export
        taken while others write is the tenant at one moment."""
        with self._snapshot() as conn:
            tables = {name: [_archived(name, dict(r._mapping)) for r in conn.execute(_select(name, tenant))]
                      for name in TABLES}
            vectors = [v for (v,) in conn.execute(select(ExperienceRow.vector).where(ExperienceRow.tenant == tenant)
                                                  .order_by(ExperienceRow.id))]
            paths = dict(conn.execute(select(AdapterRow.version, AdapterRow.path).where(AdapterRow.tenant == tenant))
                         .all())
        xb = np.frombuffer(b"".join(vectors), dtype=np.float32).reshape(len(vectors), d)
        here = {a.version: self._here(a).path for a in self.adapters(tenant=tenant)}  # the database's copy where
        # `path` is not on this host
        return TenantRows(tables, xb, {str(k): here.get(str(k), str(v)) for k, v in paths.items()})

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                if self.engine.dialect.name == "sqlite":  # pysqlite begins only before a write: begin the read now
                    conn.exec_driver_sql("BEGIN")
                yield conn

    def write_tenant(self, tx: Session, *, tenant: str, tables: Mapping[str, Sequence[dict[str, Any]]],
                     vectors: np.ndarray, adapter_paths: Mapping[str, str]) -> Written:
        """Write an archive's rows as `tenant`'s in `tx`, keeping the rows already present (see the module).

        Args:
            tables: per table name of `TABLES`, its archived rows (checked by the archive's reader).
            vectors: float32 (n, d), the vectors of `tables["experiences"]`, in their order.
            adapter_paths: the archive's adapter version -> the folder its weights were written to here.
        """
        added: dict[str, int] = dict.fromkeys(TABLES, 0)
        kept: dict[str, int] = dict.fromkeys(TABLES, 0)
        versions, new_versions = self._map_adapters(tx, tenant, tables["adapters"])
        exps, exp_ids, new_exps = self._write_experiences(tx, tenant, tables["experiences"], vectors, versions)
        inter, new_inter = self._write_interactions(tx, tenant, tables["interactions"], exps)
        added["experiences"], added["interactions"] = len(new_exps), len(new_inter)
        link = _Links(exps, inter, set(new_exps), set(new_inter), versions)
        for name in ("feedback", "answers", "feedback_events", "experience_sources", "experience_authors",
                     "retrievals", "conflicts"):
            rows = [r for r in (link.row(name, row) for row in tables[name]) if r is not None]
            if rows:
                tx.execute(insert(TABLES[name]), rows)
            added[name] = len(rows)
        added["instructions"] = self._write_missing(tx, InstructionRow, tenant, tables["instructions"])
        added["serving_modes"] = self._write_missing(tx, ServingModeRow, tenant, [
            {**r, "adapter": versions.get(r["adapter"]), "job_version": versions.get(r["job_version"])}
            for r in tables["serving_modes"]])
        added["adapters"] = self._write_adapters(tx, tenant, tables["adapters"], new_versions, versions, exps,
                                                 adapter_paths)
        for name in TABLES:
            kept[name] = len(tables[name]) - added[name]
        xb = np.asarray(vectors, dtype=np.float32)[[exp_ids[i] for i in new_exps]]
        return Written(added, kept, np.array([exps[i] for i in new_exps], dtype=np.int64), xb, versions)

    def _map_adapters(self, tx: Session, tenant: str,
                      rows: Sequence[dict[str, Any]]) -> tuple[dict[str, str], list[str]]:
        """(archive version -> version here, the archive versions that are new): an adapter already here keeps its
        version; each new one takes the store's next "v<n>", in archive order."""
        here = {(r.created_at, r.method, r.seed, r.base_model): r.version
                for r in tx.scalars(select(AdapterRow).where(AdapterRow.tenant == tenant))}
        numbers = [int(m.group(1)) for v in tx.scalars(select(AdapterRow.version)) if (m := re.fullmatch(r"v(\d+)", v))]
        versions: dict[str, str] = {}
        new: list[str] = []
        for r in rows:
            found = here.get((r["created_at"], r["method"], r["seed"], r["base_model"]))
            if found is None:
                found = f"v{max(numbers, default=0) + 1 + len(new)}"
                new.append(r["version"])
            versions[r["version"]] = found
        return versions, new

    def _write_experiences(self, tx: Session, tenant: str, rows: Sequence[dict[str, Any]], vectors: np.ndarray,
                           versions: Mapping[str, str]) -> tuple[dict[int, int], dict[int, int], list[int]]:
        """(archive id -> id here, archive id -> its row's position, the archive ids written)."""
        found = self._existing(tx, ExperienceRow, "content_hash", tenant, [r["content_hash"] for r in rows])
        position = {r["id"]: i for i, r in enumerate(rows)}
        fresh = [r for r in rows if r["content_hash"] not in found]
        values = [{**{k: v for k, v in r.items() if k != "id"}, "tenant": tenant,
                   "vector": np.asarray(vectors[position[r["id"]]], dtype=np.float32).tobytes(),
                   "consolidated_in": versions.get(r["consolidated_in"])} for r in fresh]
        ids = list(tx.scalars(insert(ExperienceRow).returning(ExperienceRow.id, sort_by_parameter_order=True),
                              values)) if values else []
        mapped = {r["id"]: found[r["content_hash"]] for r in rows if r["content_hash"] in found}
        mapped.update({r["id"]: i for r, i in zip(fresh, ids)})
        return mapped, position, [r["id"] for r in fresh]

    def _write_interactions(self, tx: Session, tenant: str, rows: Sequence[dict[str, Any]],
                            exps: Mapping[int, int]) -> tuple[dict[int, int], list[int]]:
        """(archive id -> pk here, the archive ids written); records name the tenant and the experiences here."""
        found = self._existing(tx, InteractionRow, "ext_id", tenant, [r["ext_id"] for r in rows])
        fresh = [r for r in rows if r["ext_id"] not in found]
        values = [{**{k: v for k, v in r.items() if k != "id"}, "tenant": tenant,
                   "record": json.dumps(_record_here(r["record"], tenant, exps), ensure_ascii=False)} for r in fresh]
        ids = list(tx.scalars(insert(InteractionRow).returning(InteractionRow.id, sort_by_parameter_order=True),
                              values)) if values else []
        mapped = {r["id"]: found[r["ext_id"]] for r in rows if r["ext_id"] in found}
        mapped.update({r["id"]: i for r, i in zip(fresh, ids)})
        return mapped, [r["id"] for r in fresh]

    def _write_missing(self, tx: Session, model: Any, tenant: str, rows: Sequence[dict[str, Any]]) -> int:
        """Rows of a table keyed by (tenant, ...) written where no row has their key; returns how many."""
        table = model.__table__
        written = 0
        for r in rows:
            values = {**r, "tenant": tenant}
            if tx.get(model, tuple(values[c.name] for c in table.primary_key.columns)) is None:
                tx.execute(insert(model).values(**{k: _stored(k, v) for k, v in values.items()}))
                written += 1
        return written

    def _write_adapters(self, tx: Session, tenant: str, rows: Sequence[dict[str, Any]], new: Sequence[str],
                        versions: Mapping[str, str], exps: Mapping[int, int], paths: Mapping[str, str]) -> int:
        """The new adapters, inactive, their lineage and coverage mapped; then the archive's active one is made active
        unless the tenant has an active adapter already."""
        fresh = [r for r in rows if r["version"] in set(new)]
        for r in fresh:
            tx.add(AdapterRow(**{**{k: _stored(k, v) for k, v in r.items()}, "version": versions[r["version"]],
                                 "tenant": tenant, "active": False, "path": paths[r["version"]],
                                 "previous": versions.get(r["previous"]), "parent": versions.get(r["parent"]),
                                 "covered": json.dumps(sorted(exps[i] for i in r["covered"] if i in exps)),
                                 "holdout": json.dumps(sorted(exps[i] for i in r["holdout"] or [] if i in exps))}))
        tx.flush()
        active = next((versions[r["version"]] for r in fresh if r["active"]), None)
        if active is not None and tx.scalar(select(AdapterRow.version).where(
                AdapterRow.tenant == tenant, AdapterRow.active.is_(True))) is None:
            tx.get_one(AdapterRow, active).active = True
            tx.flush()
        return len(fresh)

    @staticmethod
    def _existing(tx: Session, model: Any, key: str, tenant: str, keys: Sequence[str]) -> dict[str, int]:
        """Key -> id of the tenant's rows of `model` whose `key` column is one of `keys`."""
        table = model.__table__
        found: dict[str, int] = {}
        for i in range(0, len(keys), 500):
            found.update(tx.execute(select(table.c[key], table.c.id).where(
                table.c.tenant == tenant, table.c[key].in_(list(keys[i:i + 500])))).all())
        return found


class _Links:
    """The rows that link interactions and experiences, mapped to the ids here: written only where one of the rows
    they hang off was written by this import (a row already here keeps what hangs off it)."""

    def __init__(self, exps: Mapping[int, int], inter: Mapping[int, int], new_exps: set[int], new_inter: set[int],
                 versions: Mapping[str, str]) -> None:
        self.exps, self.inter, self.new_exps, self.new_inter, self.versions = exps, inter, new_exps, new_inter, versions

    def row(self, name: str, r: dict[str, Any]) -> dict[str, Any] | None:
        i, e = r.get("interaction_id"), r.get("experience_id")
        if name in ("feedback", "answers", "feedback_events"):
            keep = i in self.new_inter
        elif name in ("experience_sources", "retrievals"):
            keep = (i in self.new_inter or e in self.new_exps) and i in self.inter and e in self.exps
        else:  # experience_authors, conflicts
            keep = e in self.new_exps
        if not keep:
            return None
        out = {k: _stored(k, v) for k, v in r.items()}
        if "interaction_id" in r:
            out["interaction_id"] = self.inter.get(i) if i is not None else None
        if e is not None:
            out["experience_id"] = self.exps[e]
        if name == "answers":
            out["adapter"] = self.versions.get(r["adapter"])
            used = [{**x, "id": self.exps[x["id"]]} for x in r["served"].get("experiences", []) if x.get("id")
                    in self.exps]
            out["served"] = json.dumps({**r["served"], **({"experiences": used} if "experiences" in r["served"]
                                                          else {})}, ensure_ascii=False)
        return out


def _select(name: str, tenant: str) -> Any:
    """The statement that reads table `name`'s archived columns of `tenant`, in primary-key order."""
    table = TABLES[name].__table__
    stmt = select(*(table.c[c] for c in columns(name)))
    if "tenant" in table.c:
        stmt = stmt.where(table.c.tenant == tenant)
    elif name in BY_INTERACTION:
        stmt = stmt.join(InteractionRow, InteractionRow.id == table.c.interaction_id).where(
            InteractionRow.tenant == tenant)
    else:
        stmt = stmt.join(ExperienceRow, ExperienceRow.id == table.c.experience_id).where(ExperienceRow.tenant == tenant)
    return stmt.order_by(*table.primary_key.columns)


def _archived(name: str, row: dict[str, Any]) -> dict[str, Any]:
    """A row as the archive holds it: JSON columns as values, booleans as booleans."""
    out = {k: json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v for k, v in row.items()}
    if name == "adapters":
        out["active"] = bool(out["active"])
    return out


def _stored(column: str, value: Any) -> Any:
    """An archived value as its column stores it (JSON columns as text)."""
    return json.dumps(value, ensure_ascii=False) if column in JSON_COLUMNS and value is not None else value


def _record_here(record: dict[str, Any], tenant: str, exps: Mapping[int, int]) -> dict[str, Any]:
    """An interaction's record with the importing tenant and the experiences it retrieved by their ids here."""
    out = {**record, "tenant": tenant}
    meta = record.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("retrieved"), list):
        out["metadata"] = {**meta, "retrieved": [exps[i] for i in meta["retrieved"] if i in exps]}
    return out
