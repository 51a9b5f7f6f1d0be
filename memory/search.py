"""Search: the experiences that best answer a request. The tenant's index gives candidates by cosine, the Numba
kernels score them (similarity, utility, recency) and pick a diverse `k` (MMR), all from the candidates' rows: held
by the process while SQL's counters say they are unchanged (`HeldRows`), else read in one statement."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import kernels
from .config import MemoryConfig
from .embedding import Embedder
from .index import Index
from .indexes import TenantIndexes, is_empty
from .instructions import SharedInstructions
from .store import ExperienceData, Store
from .text import clean_text

DAY = 86_400.0


@dataclass(frozen=True)
class Hit:
    """One retrieved experience with the parts of its score (score = sim + util + rec)."""

    id: int
    score: float
    sim: float  # w_sim * cosine
    util: float  # w_util * (utility - 1/2)
    rec: float  # w_rec * 2^(-age / half_life)
    cos: float
    utility: float
    trigger: str
    response: str
    lesson: str | None
    rejected: str | None
    support: int
    tenant: str
    instruction: str | None = None  # the shared instruction the trigger opens with, if any

    @property
    def body(self) -> str:
        """The trigger without its shared instruction (what was embedded)."""
        if self.instruction and self.trigger.startswith(self.instruction):
            return self.trigger[len(self.instruction):].strip()
        return self.trigger

    def to_json(self) -> dict[str, object]:
        return dict(vars(self))

    def parts(self) -> dict[str, float | int]:
        """The id and the parts of the score: what a served answer records of each experience it used."""
        return {"id": self.id, "score": self.score, "sim": self.sim, "util": self.util, "rec": self.rec,
                "cos": self.cos, "utility": self.utility}


Stamp = tuple[int, int]  # a tenant's (generation, version) as SQL gave it (`Store.search_state`)


class HeldRows:
    """The experience rows this process's searches read, per tenant, kept while SQL says they are unchanged: a
    search asks SQL for the tenant's stamp (one small read it makes anyway, for its index) and, when its version
    moved, for the ids that changed since the version held (`Store.experience_changes`: only those go), then for
    the candidates it does not hold. A tenant that fits is read whole at its first search (one statement). Every
    change to what a search reads of an experience, in any process, forgotten rows included, logs its id under a
    new version (`Store.touched`); a log that no longer reaches back drops the tenant's rows whole. At most
    `limit` rows in all (the oldest read go first); 0 holds none. Not thread-safe: searches use it under the
    memory's lock."""

    def __init__(self, store: Store, limit: int) -> None:
        self.store, self.limit = store, limit
        self._tenants: dict[str, tuple[int, OrderedDict[int, ExperienceData]]] = {}  # tenant -> (version, rows)
        self._count = 0
        self.reads = 0  # statements sent to SQL for rows

    def get(self, tenant: str, stamp: Stamp, ids: list[int], *,
            size: Callable[[], int] | None = None) -> dict[int, ExperienceData]:
        """The tenant's experiences among `ids`, by id, as of `stamp` or later (an unknown id, or another tenant's,
        is left out). `size()`: how many experiences the tenant has (its index's count, asked only when the tenant
        is not held yet), for reading it whole where it fits."""
        if not self.limit:
            self.reads += 1
            return self.store.get_experiences(tenant=tenant, ids=ids)
        rows = self._at(tenant, stamp[1], size)
        found = {i: rows[i] for i in ids if i in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            read = self.store.get_experiences(tenant=tenant, ids=missing)  # as new as `stamp` at least: kept as it
            self.reads += 1
            found.update(read)
            rows.update(read)
            self._count += len(read)
            self._trim(keep=tenant)
        return found

    def _at(self, tenant: str, version: int, size: Callable[[], int] | None) -> OrderedDict[int, ExperienceData]:
        """The rows held of the tenant, brought to `version`."""
        held = self._tenants.get(tenant)
        if held is not None and held[0] != version:
            changed = self.store.experience_changes(tenant=tenant, after=held[0])
            if changed is None:
                self.forget(tenant)
                held = None
            else:
                rows = held[1]
                for i in changed:
                    if rows.pop(i, None) is not None:
                        self._count -= 1
                held = self._tenants[tenant] = (version, rows)
        if held is None:
            rows = OrderedDict()
            if size is not None and 0 < size() <= self.limit:
                rows.update(self.store.all_experiences(tenant=tenant))
                self.reads += 1
                self._count += len(rows)
            held = self._tenants[tenant] = (version, rows)
            self._trim(keep=tenant)
        return held[1]

    def held(self, tenant: str) -> list[int]:
        """The ids of the tenant's rows held now."""
        found = self._tenants.get(tenant)
        return sorted(found[1]) if found is not None else []

    def forget(self, tenant: str | None = None) -> None:
        """Drop the rows held of `tenant` (None: of every tenant)."""
        for t in [tenant] if tenant is not None else list(self._tenants):
            held = self._tenants.pop(t, None)
            self._count -= len(held[1]) if held is not None else 0

    def _trim(self, keep: str) -> None:
        """The oldest rows out while over the limit: other tenants' whole first, then `keep`'s oldest."""
        for t in [t for t in self._tenants if t != keep]:
            if self._count <= self.limit:
                return
            self.forget(t)
        rows = self._tenants[keep][1]
        while self._count > self.limit:
            rows.popitem(last=False)
            self._count -= 1


class Searcher:
    """Searches a memory's per-tenant indexes. `lock` is the memory's: no search reads an index while another
    thread of the process changes it."""

    def __init__(self, *, store: Store, indexes: TenantIndexes, config: MemoryConfig, embedder: Embedder,
                 instructions: SharedInstructions, lock: threading.RLock) -> None:
        self.store, self.indexes, self.config, self.embedder = store, indexes, config, embedder
        self.instructions, self.lock = instructions, lock
        self.rows = HeldRows(store, config.held_rows)

    def search(self, text: str, k: int = 5, *, tenant: str = "default", now: float | None = None) -> list[Hit]:
        """The `k` best experiences for a request: faiss candidates, Numba scoring, MMR diversity. The request passes
        the text boundary first (`clean_text`): the embedder never sees text it did not pass."""
        if k <= 0:
            return []
        text = clean_text(text)
        with self.lock:  # brought up to SQL's stamp once (one read), before embedding: none if empty
            index, stamp = self._current(tenant)
            if is_empty(index):
                return []
        _, body = self.instructions.split(tenant, text)
        xq = self.embedder.encode([body])[0]
        with self.lock:  # the index and rows of a few ms ago, unless this process has replaced the index meanwhile
            if self.indexes.held(tenant) is not index:
                index, stamp = self._current(tenant)
            return self._search_in(index, stamp, xq, k, tenant, now)

    def search_vector(self, xq: np.ndarray, k: int = 5, *, tenant: str = "default",
                      now: float | None = None) -> list[Hit]:
        """`search` for an already embedded request `xq` (float32, (d,))."""
        with self.lock:
            index, stamp = self._current(tenant)
            if k <= 0 or is_empty(index):
                return []
            return self._search_in(index, stamp, xq, k, tenant, now)

    def _current(self, tenant: str) -> tuple[Index, Stamp]:
        """The tenant's index at SQL's generation, and its stamp (one read of SQL)."""
        stamp = self.store.search_state(tenant=tenant)
        return self.indexes.get(tenant, generation=stamp[0]), stamp

    def _search_in(self, index: Index, stamp: Stamp, xq: np.ndarray, k: int, tenant: str,
                   now: float | None) -> list[Hit]:
        cfg = self.config
        D, I = index.search(np.asarray(xq, dtype=np.float32)[None, :], max(cfg.fetch_k, k))
        # The candidates' rows, held or read in one statement (scoring columns and texts: at fetch_k rows, one
        # statement costs less than two); another tenant's id, or one forgotten since the index was read, is not
        # among them.
        candidates = I[0].tolist()
        rows = self.rows.get(tenant, stamp, [i for i in candidates if i >= 0], size=index.__len__)
        keep_consolidated = cfg.retrieve_consolidated
        found, places = [], []  # the usable rows, and each one's place among the index's answers
        for j, i in enumerate(candidates):
            r = rows.get(i)
            if r is not None and (keep_consolidated or r.consolidated_in is None):
                found.append(r)
                places.append(j)
        if not found:
            return []
        now = time.time() if now is None else now
        n = len(found)
        cos = D[0][places].astype(np.float32, copy=False)
        util = np.fromiter((r.alpha / (r.alpha + r.beta) for r in found), dtype=np.float32, count=n)
        age = ((now - np.fromiter((r.last_seen_at for r in found), dtype=np.float64, count=n)) / DAY).astype(np.float32)
        scores = kernels.combined_score(cos, util, age, cfg.w_sim, cfg.w_util, cfg.w_rec, cfg.half_life_days,
                                        cfg.min_sim)
        xb = np.concatenate([r.vector for r in found]).reshape(n, -1)
        picked = kernels.mmr_select(scores, xb, k, cfg.mmr_lambda)
        return [self._hit(found[j], float(cos[j]), float(age[j]), float(scores[j])) for j in picked]

    def neighbours(self, text: str, k: int = 10, *, tenant: str = "default") -> list[Hit]:
        """The `k` nearest experiences by trigger cosine alone (no utility, recency or MMR): a plain kNN."""
        text = clean_text(text)
        with self.lock:
            index = self.indexes.get(tenant)
            if k <= 0 or is_empty(index):
                return []
            _, body = self.instructions.split(tenant, text)
            D, I = index.search(self.embedder.encode([body]), k)
            rows = self.store.get_experiences(tenant=tenant, ids=[int(i) for i in I[0] if i >= 0])
            now = time.time()
            return [self._hit(rows[i], float(s), (now - rows[i].last_seen_at) / DAY, float(s))
                    for s, i in zip(D[0], I[0]) if i in rows]

    def _hit(self, r: ExperienceData, cos: float, age: float, score: float) -> Hit:
        cfg, utility = self.config, r.utility
        return Hit(id=r.id, score=score, sim=cfg.w_sim * cos, util=cfg.w_util * (utility - 0.5),
                   rec=cfg.w_rec * 2.0 ** (-max(age, 0.0) / cfg.half_life_days), cos=cos, utility=utility,
                   trigger=r.trigger, response=r.response, lesson=r.lesson, rejected=r.rejected,
                   support=r.support, tenant=r.tenant, instruction=r.instruction)
