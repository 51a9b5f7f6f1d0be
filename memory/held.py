"""What a process's searches hold of each tenant while SQL says it is unchanged (`HeldRows`): its scoring columns,
whole (`Columns`: ~22 bytes an experience, so a tenant of any size is held whole and scored in one kernel), and the
rows (texts) of the experiences its searches picked, up to a limit (a tenant that fits, all of them, from its first
search). A candidate's vector comes from the index that found it: nothing here holds a copy."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from . import kernels
from .config import MemoryConfig
from .index import Index
from .store import ExperienceData, ScoringColumns, Store

REREAD_MAX = 500  # changed experiences of a tenant read again by id; more: the tenant read again whole


class Picked(NamedTuple):
    """A search's picks, in pick order: each one's row, cosine, age in days and score."""

    rows: list[ExperienceData]
    cos: np.ndarray
    age: np.ndarray
    scores: np.ndarray


def scoring_params(config: MemoryConfig) -> np.ndarray:
    """The scoring settings `kernels.pick_held` takes, in its order."""
    return np.array([config.w_sim, config.w_util, config.w_rec, config.half_life_days, config.min_sim,
                     config.mmr_lambda], dtype=np.float64)


class Columns:
    """A tenant's scoring columns, as arrays in id order: each experience's id, utility, last seen, whether it is
    kept (not consolidated) and whether it is still there (a forgotten one stays, marked gone, until the arrays are
    built again). A search's picks are one kernel over them away (`pick`). New ids above the highest join at the
    end (built with room for 1/8 more; it doubles as it fills); an id below it builds the arrays again."""

    def __init__(self, columns: ScoringColumns) -> None:
        self.n = self.live = 0  # rows in the arrays, and those still there
        self.ids = np.empty(0, np.int64)
        self.utility = np.empty(0, np.float32)
        self.seen = np.empty(0, np.float64)
        self.kept = np.empty(0, np.bool_)
        self.there = np.empty(0, np.bool_)
        self._build(columns)

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self.ids, self.utility, self.seen, self.kept, self.there

    def _build(self, columns: ScoringColumns) -> None:
        self.n = self.live = 0
        self._room(len(columns.ids) + max(16, len(columns.ids) // 8))  # room for 1/8 more
        self._append(columns)

    def _room(self, capacity: int) -> None:
        """Arrays of `capacity` rows, the first `n` as they were."""
        old, n = self._arrays(), self.n
        self.ids, self.utility, self.seen = (np.empty(capacity, np.int64), np.empty(capacity, np.float32),
                                             np.empty(capacity))
        self.kept, self.there = np.zeros(capacity, np.bool_), np.zeros(capacity, np.bool_)
        for new, cur in zip(self._arrays(), old):
            new[:n] = cur[:n]

    def _append(self, columns: ScoringColumns) -> None:
        """Columns whose ids are above every id held, in id order."""
        a, b = self.n, self.n + len(columns.ids)
        if b > len(self.ids):
            self._room(2 * b)
        self.ids[a:b], self.utility[a:b], self.seen[a:b], self.kept[a:b] = columns
        self.there[a:b] = True
        self.n, self.live = b, self.live + (b - a)

    def _places(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each id's place in the arrays, and whether it is there (the place is meaningless where not)."""
        if not self.n:
            return np.zeros(len(ids), np.intp), np.zeros(len(ids), np.bool_)
        at = np.minimum(np.searchsorted(self.ids[:self.n], ids), self.n - 1)
        return at, self.ids[at] == ids

    def put(self, columns: ScoringColumns) -> None:
        """Columns read afresh: each replaces those of its id, or joins."""
        at, found = self._places(columns.ids)
        p = at[found]
        self.live += int((~self.there[p]).sum())
        self.utility[p], self.seen[p], self.kept[p] = (columns.utility[found], columns.seen[found],
                                                       columns.kept[found])
        self.there[p] = True
        if found.all():
            return
        new = ScoringColumns(*(c[~found] for c in columns))
        if self.n and new.ids[0] < self.ids[self.n - 1]:
            there = self.there[:self.n]
            held = ScoringColumns(*(c[:self.n][there] for c in (self.ids, self.utility, self.seen, self.kept)))
            order = np.argsort(np.concatenate([held.ids, new.ids]), kind="stable")
            self._build(ScoringColumns(*(np.concatenate([h, c])[order] for h, c in zip(held, new))))
        else:
            self._append(new)

    def drop(self, ids: Sequence[int]) -> None:
        """Experiences gone from the tenant (forgotten, or no longer its own)."""
        at, found = self._places(np.asarray(ids, np.int64))
        p = at[found]
        self.live -= int(self.there[p].sum())
        self.there[p] = False

    def held(self) -> list[int]:
        return self.ids[:self.n][self.there[:self.n]].tolist()

    def pick(self, answers: np.ndarray, cos: np.ndarray, vectors: tuple[np.ndarray, np.ndarray], consolidated: bool,
             now: float, params: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """The `k` picks among an index's answers (ids, -1: none; `cos`: theirs; `vectors`: sorted ids with every
        answer among them, and their vectors) in one kernel (`kernels.pick_held`): their ids, cosines, ages in days
        and scores, in pick order, and how many answered ids are not held (an index newer than the columns: the
        caller reads them and asks again)."""
        at, c, age, scores, missing = kernels.pick_held(
            self.n, self.ids, self.there, self.kept, self.utility, self.seen, answers, cos, vectors[0], vectors[1],
            consolidated, now, params, k)
        return self.ids[at], c, age, scores, missing

    def not_held(self, answers: np.ndarray) -> list[int]:
        """The answered ids not held."""
        _, found = self._places(answers)
        return answers[~found & (answers >= 0)].tolist()


class HeldRows:
    """What this process's searches hold of each tenant, kept while SQL says it is unchanged: a search asks SQL for
    the tenant's stamp (one small read it makes anyway, for its index) and, when its version moved, for the ids that
    changed since the version held (`Store.experience_changes`), which it reads again at once (one statement; more
    than REREAD_MAX: the tenant read again whole). Every change to what a search reads of an experience, in any
    process, forgotten ones included, logs its id under a new version (`Store.touched`); a log that no longer
    reaches back drops the tenant whole.

    Held per tenant: its scoring columns, whole (`Columns`, read at its first search in one statement), and the rows
    (texts) of the experiences its searches picked, read in one statement for those not held: at most `limit` rows
    in all (other tenants' go first, then the oldest picked; 0 holds none). A tenant with at most `limit`
    experiences is read whole at its first search, rows and all. Not thread-safe: searches use it under the memory's
    lock."""

    def __init__(self, store: Store, limit: int) -> None:
        self.store, self.limit = store, limit
        self._tenants: dict[str, tuple[int, Columns, OrderedDict[int, ExperienceData]]] = {}  # version, held
        self._count = 0  # rows held, over every tenant
        self.reads = 0  # statements sent to SQL for columns or rows
        self._config: MemoryConfig | None = None
        self._params = scoring_params(MemoryConfig())  # the scoring settings of `_config`, as the kernel takes them

    def pick(self, tenant: str, stamp: tuple[int, int], answers: np.ndarray, cos: np.ndarray, index: Index, *,
             now: float, config: MemoryConfig, k: int) -> Picked:
        """The `k` picks among the tenant's usable experiences in its `index`'s `answers` (ids, -1: none; `cos`:
        theirs), read as of `stamp` or later (an unknown id, another tenant's, or a consolidated one unless
        `config.retrieve_consolidated`, is left out). The candidates' vectors are the index's."""
        columns, rows = self._at(tenant, stamp[1], index)
        if config is not self._config:
            self._config, self._params = config, scoring_params(config)
        table = getattr(index, "vector_table", None)
        vectors = table() if table is not None else None
        if vectors is None:  # the answers' vectors alone, asked of the index
            keys = np.unique(answers[answers >= 0])
            vectors = keys, index.vectors(keys) if len(keys) else np.empty((0, index.d), np.float32)
        args = (answers, cos, vectors, config.retrieve_consolidated, now, self._params, k)
        ids, c, age, scores, missing = columns.pick(*args)
        grew = bool(missing)
        if missing:  # an index newer than the columns held: those experiences read (one not the tenant's stays out)
            read = self._read(tenant, columns.not_held(answers))
            columns.put(ScoringColumns.of(read.values()))
            self._hold(rows, read)
            ids, c, age, scores, _ = columns.pick(*args)
        wanted = [i for i in ids.tolist() if i not in rows]
        if wanted:  # the picks' rows not held, in one statement, as new as `stamp` at least: held as they are
            self._hold(rows, self._read(tenant, wanted))
        got = [rows.get(i) for i in ids.tolist()]
        for r in got:
            if r is not None:
                rows.move_to_end(r.id)
        if wanted or grew:
            self._trim(keep=tenant)
        if None in got:  # forgotten since the stamp was read
            there = np.array([r is not None for r in got], dtype=np.bool_)
            return Picked([r for r in got if r is not None], c[there], age[there], scores[there])
        return Picked(got, c, age, scores)  # type: ignore[arg-type]

    def _hold(self, rows: OrderedDict[int, ExperienceData], read: dict[int, ExperienceData]) -> None:
        for i, r in read.items():
            self._count += i not in rows
            rows[i] = r

    def _read(self, tenant: str, ids: list[int]) -> dict[int, ExperienceData]:
        self.reads += 1
        return self.store.get_experiences(tenant=tenant, ids=ids, vectors=False)  # the index holds those

    def _at(self, tenant: str, version: int, index: Index) -> tuple[Columns, OrderedDict[int, ExperienceData]]:
        """The columns and rows held of the tenant, brought to `version` (its index's size, asked only when nothing
        is held of it yet: a tenant that fits is read whole)."""
        held = self._tenants.get(tenant)
        if held is not None and held[0] != version:
            changed = self.store.experience_changes(tenant=tenant, after=held[0])
            if changed is None or len(changed) > REREAD_MAX:
                self.forget(tenant)  # read again whole
                held = None
            else:
                _, columns, rows = held
                read = self._read(tenant, sorted(changed)) if changed else {}
                columns.drop([i for i in changed if i not in read])
                columns.put(ScoringColumns.of(read.values()))
                for i in changed:
                    if rows.pop(i, None) is not None:
                        self._count -= 1
                self._hold(rows, read)
                held = self._tenants[tenant] = (version, columns, rows)
                self._trim(keep=tenant)
        if held is None:
            if 0 < len(index) <= self.limit:
                self.reads += 1
                whole = self.store.all_experiences(tenant=tenant, vectors=False)
                held = (version, Columns(ScoringColumns.of(whole.values())), OrderedDict(sorted(whole.items())))
                self._count += len(whole)
            else:
                self.reads += 1
                held = (version, Columns(self.store.scoring_columns(tenant=tenant)), OrderedDict())
            self._tenants[tenant] = held
            self._trim(keep=tenant)
        return held[1], held[2]

    def held(self, tenant: str) -> list[int]:
        """The ids of the tenant's rows held now."""
        found = self._tenants.get(tenant)
        return sorted(found[2]) if found is not None else []

    def columns(self, tenant: str) -> Columns | None:
        """The tenant's scoring columns as held now (None: not held)."""
        found = self._tenants.get(tenant)
        return found[1] if found is not None else None

    def row(self, tenant: str, id: int) -> ExperienceData | None:
        """The tenant's row of `id` as held now (None: not held)."""
        found = self._tenants.get(tenant)
        return found[2].get(id) if found is not None else None

    def forget(self, tenant: str | None = None) -> None:
        """Drop what is held of `tenant` (None: of every tenant)."""
        for t in [tenant] if tenant is not None else list(self._tenants):
            held = self._tenants.pop(t, None)
            if held is not None:
                self._count -= len(held[2])

    def _trim(self, keep: str) -> None:
        """The oldest rows out while over the limit: other tenants' first, then `keep`'s (a tenant's columns stay)."""
        for t, (_, _, rows) in self._tenants.items():
            while self._count > self.limit and rows and t != keep:
                rows.popitem(last=False)
                self._count -= 1
        rows = self._tenants[keep][2] if keep in self._tenants else OrderedDict()
        while self._count > self.limit and rows:
            rows.popitem(last=False)
            self._count -= 1
