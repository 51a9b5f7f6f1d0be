"""The experience rows a process's searches hold, per tenant, while SQL says they are unchanged (`HeldRows`), and
what a search takes of them for its candidates (`Candidates`): the scoring columns, the vectors and the rows."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from . import kernels
from .config import MemoryConfig
from .store import ExperienceData, Store

REREAD_MAX = 500  # changed rows of a tenant held whole read again by id; more: the tenant read again whole


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


class Candidates(NamedTuple):
    """The usable rows among an index's answers: `places[j]` is row j's place among the answers; `utility`,
    `seen` (last seen, epoch s) and `vectors` (n, d) are its scoring columns."""

    places: np.ndarray
    utility: np.ndarray
    seen: np.ndarray
    vectors: np.ndarray
    rows: Sequence[ExperienceData]

    @classmethod
    def of(cls, answers: Sequence[int], rows: dict[int, ExperienceData], consolidated: bool) -> Candidates:
        """From rows by id (those read, or held of a tenant held in part): the answers' usable rows in their order
        (an id not among `rows` is not usable; nor is a consolidated experience unless `consolidated`)."""
        found, places = [], []
        for j, i in enumerate(answers):
            r = rows.get(i)
            if r is not None and (consolidated or r.consolidated_in is None):
                found.append(r)
                places.append(j)
        n = len(found)
        return cls(np.array(places, dtype=np.intp),
                   np.fromiter((r.alpha / (r.alpha + r.beta) for r in found), dtype=np.float32, count=n),
                   np.fromiter((r.last_seen_at for r in found), dtype=np.float64, count=n),
                   np.concatenate([r.vector for r in found]).reshape(n, -1) if n else np.empty((0, 0), np.float32),
                   found)

    def pick(self, cos: np.ndarray, now: float, config: MemoryConfig, k: int) -> Picked:
        """The `k` picks among the rows (`cos`: the cosines of every answer of the index): `combined_score`, then
        `mmr_select`."""
        c = cos[self.places].astype(np.float32, copy=False)
        age = ((now - self.seen) / kernels.DAY).astype(np.float32)
        scores = kernels.combined_score(c, self.utility, age, config.w_sim, config.w_util, config.w_rec,
                                        config.half_life_days, config.min_sim)
        picked = kernels.mmr_select(scores, self.vectors, k, config.mmr_lambda)
        return Picked([self.rows[j] for j in picked.tolist()], c[picked], age[picked], scores[picked])


class Columns:
    """A tenant held whole, as arrays in id order: each experience's id, utility, last seen, whether it is
    consolidated and whether it is still there (a forgotten one stays, marked gone, until the arrays are built
    again), its vector in one matrix, and its row (whose vector is a view of that row of the matrix: held once). A
    search's picks are one kernel over the arrays away (`pick`), not a loop over row objects. New ids above the
    highest join at the end (built with room for 1/8 more; it doubles as it fills); an id below it builds the arrays
    again."""

    def __init__(self, rows: Sequence[ExperienceData]) -> None:
        self.n = self.live = 0  # rows in the arrays, and those still there
        self.ids = np.empty(0, np.int64)
        self.utility = np.empty(0, np.float32)
        self.seen = np.empty(0, np.float64)
        self.kept = np.empty(0, np.bool_)
        self.there = np.empty(0, np.bool_)
        self.vectors = np.empty((0, 0), np.float32)
        self.rows: list[ExperienceData | None] = []
        self._build(rows)

    def _build(self, rows: Sequence[ExperienceData]) -> None:
        rows = sorted(rows, key=lambda r: r.id)
        self.n = self.live = 0
        self._room(len(rows) + max(16, len(rows) // 8), len(rows[0].vector) if rows else 0)  # room for 1/8 more
        self._append(rows)

    def _room(self, capacity: int, d: int) -> None:
        """Arrays of `capacity` rows, the first `n` as they were."""
        n = self.n
        old: tuple[np.ndarray, ...] | None = (
            (self.ids, self.utility, self.seen, self.kept, self.there, self.vectors) if n else None)
        self.ids, self.utility, self.seen = (np.empty(capacity, np.int64), np.empty(capacity, np.float32),
                                             np.empty(capacity))
        self.kept, self.there = np.zeros(capacity, np.bool_), np.zeros(capacity, np.bool_)
        self.vectors = np.empty((capacity, d), np.float32)
        rows: list[ExperienceData | None] = [None] * capacity
        if old is not None:
            fresh: tuple[np.ndarray, ...] = (self.ids, self.utility, self.seen, self.kept, self.there, self.vectors)
            for new, cur in zip(fresh, old):
                new[:n] = cur[:n]
            for p, r in enumerate(self.rows[:n]):  # each row's vector, a view of the new matrix: the old one goes
                rows[p] = r.with_vector(self.vectors[p]) if r is not None else None
        self.rows = rows

    def _set(self, p: int, r: ExperienceData) -> None:
        self.vectors[p] = r.vector
        self.utility[p] = r.alpha / (r.alpha + r.beta)
        self.seen[p] = r.last_seen_at
        self.kept[p] = r.consolidated_in is None
        self.live += not self.there[p]
        self.there[p] = True
        self.rows[p] = r.with_vector(self.vectors[p])

    def _append(self, rows: Sequence[ExperienceData]) -> None:
        """Rows whose ids are above every id held, in id order."""
        a, b = self.n, self.n + len(rows)
        if not rows:
            return
        if b > len(self.ids):
            self._room(2 * b, self.vectors.shape[1])
        self.ids[a:b] = [r.id for r in rows]
        self.utility[a:b] = [r.alpha / (r.alpha + r.beta) for r in rows]
        self.seen[a:b] = [r.last_seen_at for r in rows]
        self.kept[a:b] = [r.consolidated_in is None for r in rows]
        self.there[a:b] = True
        self.vectors[a:b] = np.stack([r.vector for r in rows])
        self.rows[a:b] = [r.with_vector(v) for r, v in zip(rows, self.vectors[a:b])]
        self.n, self.live = b, self.live + len(rows)

    def _places(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each id's place in the arrays, and whether it is there (the place is meaningless where not)."""
        if not self.n:
            return np.zeros(len(ids), np.intp), np.zeros(len(ids), np.bool_)
        at = np.minimum(np.searchsorted(self.ids[:self.n], ids), self.n - 1)
        return at, self.ids[at] == ids

    def put(self, rows: Sequence[ExperienceData]) -> None:
        """Rows read afresh: each replaces the one of its id, or joins."""
        at, found = self._places(np.fromiter((r.id for r in rows), np.int64, len(rows)))
        new = sorted((r for r, f in zip(rows, found) if not f), key=lambda r: r.id)
        for r, p, f in zip(rows, at.tolist(), found.tolist()):
            if f:
                self._set(p, r)
        if not new:
            return
        if not self.n or self.vectors.shape[1] != len(new[0].vector) or new[0].id < self.ids[self.n - 1]:
            self._build([r for r in self.rows[:self.n] if r is not None] + new)
        else:
            self._append(new)

    def drop(self, ids: Sequence[int]) -> None:
        """Rows gone from the tenant (forgotten, or no longer its own)."""
        at, found = self._places(np.asarray(ids, np.int64))
        for p in at[found].tolist():
            if self.there[p]:
                self.there[p], self.rows[p] = False, None
                self.live -= 1

    def row(self, id: int) -> ExperienceData | None:
        at, found = self._places(np.array([id], np.int64))
        return self.rows[int(at[0])] if found[0] else None

    def held(self) -> list[int]:
        return self.ids[:self.n][self.there[:self.n]].tolist()

    def pick(self, answers: np.ndarray, cos: np.ndarray, consolidated: bool, now: float, params: np.ndarray,
             k: int) -> tuple[Picked, int]:
        """`Candidates.pick` over the index's answers (ids, -1: none; `cos`: theirs) among the rows held, in one
        kernel (`kernels.pick_held`: the same scoring and selection), and how many answered ids are not held (an
        index newer than the rows: the caller reads them and asks again)."""
        at, c, age, scores, missing = kernels.pick_held(
            self.n, self.ids, self.there, self.kept, self.utility, self.seen, self.vectors, answers, cos, consolidated,
            now, params, k)
        rows = self.rows
        return Picked([rows[i] for i in at.tolist()], c, age, scores), missing  # type: ignore[misc]

    def not_held(self, answers: np.ndarray) -> list[int]:
        """The answered ids not held."""
        at, found = self._places(answers)
        return answers[~found & (answers >= 0)].tolist()


class HeldRows:
    """The experience rows this process's searches read, per tenant, kept while SQL says they are unchanged: a
    search asks SQL for the tenant's stamp (one small read it makes anyway, for its index) and, when its version
    moved, for the ids that changed since the version held (`Store.experience_changes`), then for the candidates it
    does not hold. A tenant that fits is read whole at its first search (one statement) and held as arrays
    (`Columns`): its changed rows are read again at once (one statement), so it stays whole. A tenant held in part
    drops its changed rows (read again when they are candidates). Every change to what a search reads of an
    experience, in any process, forgotten rows included, logs its id under a new version (`Store.touched`); a log
    that no longer reaches back drops the tenant's rows whole. At most `limit` rows in all (other tenants go
    first, then the oldest read); 0 holds none. Not thread-safe: searches use it under the memory's lock."""

    def __init__(self, store: Store, limit: int) -> None:
        self.store, self.limit = store, limit
        self._tenants: dict[str, tuple[int, OrderedDict[int, ExperienceData] | Columns]] = {}  # -> (version, rows)
        self._count = 0
        self.reads = 0  # statements sent to SQL for rows
        self._config: MemoryConfig | None = None
        self._params = scoring_params(MemoryConfig())  # the scoring settings of `_config`, as `Columns.pick` takes them

    def pick(self, tenant: str, stamp: tuple[int, int], answers: np.ndarray, cos: np.ndarray, *, now: float,
             config: MemoryConfig, k: int, size: Callable[[], int] | None = None) -> Picked:
        """The `k` picks among the tenant's usable experiences in the index's `answers` (ids, -1: none; `cos`:
        theirs), read as of `stamp` or later (an unknown id, another tenant's, or a consolidated one unless
        `config.retrieve_consolidated`, is left out). `size()`: how many experiences the tenant has (its index's
        count, asked only when the tenant is not held yet), for reading it whole where it fits."""
        consolidated = config.retrieve_consolidated
        if not self.limit:
            ids = answers.tolist()
            return Candidates.of(ids, self._read(tenant, [i for i in ids if i >= 0]), consolidated).pick(
                cos, now, config, k)
        rows = self._at(tenant, stamp[1], size)
        if isinstance(rows, Columns):
            if config is not self._config:
                self._config, self._params = config, scoring_params(config)
            picked, missing = rows.pick(answers, cos, consolidated, now, self._params, k)
            if missing:  # an index newer than the rows held: those rows read (an id not the tenant's stays out)
                before = rows.live
                rows.put(list(self._read(tenant, rows.not_held(answers)).values()))
                self._count += rows.live - before
                picked = rows.pick(answers, cos, consolidated, now, self._params, k)[0]
                self._trim(keep=tenant)
            return picked
        ids = answers.tolist()
        missing_ids = [i for i in ids if i >= 0 and i not in rows]
        if missing_ids:
            read = self._read(tenant, missing_ids)  # as new as `stamp` at least: kept as it
            rows.update(read)
            self._count += len(read)
        picked = Candidates.of(ids, rows, consolidated).pick(cos, now, config, k)
        if missing_ids:
            self._trim(keep=tenant)
        return picked

    def _read(self, tenant: str, ids: list[int]) -> dict[int, ExperienceData]:
        self.reads += 1
        return self.store.get_experiences(tenant=tenant, ids=ids)

    def _at(self, tenant: str, version: int,
            size: Callable[[], int] | None) -> OrderedDict[int, ExperienceData] | Columns:
        """The rows held of the tenant, brought to `version`."""
        held = self._tenants.get(tenant)
        if held is not None and held[0] != version:
            changed = self.store.experience_changes(tenant=tenant, after=held[0])
            rows = held[1]
            if changed is None or (isinstance(rows, Columns) and len(changed) > REREAD_MAX):
                self.forget(tenant)  # (a whole tenant read again whole, in one statement)
            elif isinstance(rows, Columns):  # read again at once: the tenant stays whole
                before = rows.live
                read = self._read(tenant, sorted(changed)) if changed else {}
                rows.drop([i for i in changed if i not in read])
                rows.put(list(read.values()))
                self._count += rows.live - before
                self._tenants[tenant] = (version, rows)
                self._trim(keep=tenant)
            else:
                for i in changed:
                    if rows.pop(i, None) is not None:
                        self._count -= 1
                self._tenants[tenant] = (version, rows)
            held = self._tenants.get(tenant)
        if held is None:
            if size is not None and 0 < size() <= self.limit:
                whole = Columns(list(self._read_all(tenant).values()))
                self._tenants[tenant] = (version, whole)
                self._count += whole.live
                self._trim(keep=tenant)
            held = self._tenants.setdefault(tenant, (version, OrderedDict()))
        return held[1]

    def _read_all(self, tenant: str) -> dict[int, ExperienceData]:
        self.reads += 1
        return self.store.all_experiences(tenant=tenant)

    def held(self, tenant: str) -> list[int]:
        """The ids of the tenant's rows held now."""
        found = self._tenants.get(tenant)
        if found is None:
            return []
        return found[1].held() if isinstance(found[1], Columns) else sorted(found[1])

    def row(self, tenant: str, id: int) -> ExperienceData | None:
        """The tenant's row of `id` as held now (None: not held)."""
        found = self._tenants.get(tenant)
        if found is None:
            return None
        return found[1].row(id) if isinstance(found[1], Columns) else found[1].get(id)

    def forget(self, tenant: str | None = None) -> None:
        """Drop the rows held of `tenant` (None: of every tenant)."""
        for t in [tenant] if tenant is not None else list(self._tenants):
            held = self._tenants.pop(t, None)
            if held is not None:
                self._count -= held[1].live if isinstance(held[1], Columns) else len(held[1])

    def _trim(self, keep: str) -> None:
        """The oldest rows out while over the limit: other tenants' whole first, then `keep`'s (a tenant held
        whole that outgrew the limit is dropped whole: held in part from its next search)."""
        for t in [t for t in self._tenants if t != keep]:
            if self._count <= self.limit:
                return
            self.forget(t)
        if self._count <= self.limit or keep not in self._tenants:
            return
        rows = self._tenants[keep][1]
        if isinstance(rows, Columns):
            self.forget(keep)
            return
        while self._count > self.limit:
            rows.popitem(last=False)
            self._count -= 1
