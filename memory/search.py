"""Search: the experiences that best answer a request. The tenant's index gives candidates by cosine and their
vectors, and one Numba kernel scores them (similarity, utility, recency) and picks a diverse `k` (MMR) over the
tenant's scoring columns, held whole by the process while SQL's counters say they are unchanged (`held.HeldRows`);
the picks' rows (texts) are held too, or read in one statement."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from .config import MemoryConfig
from .embedding import Embedder
from .held import HeldRows
from .index import Index
from .indexes import TenantIndexes, is_empty
from .instructions import SharedInstructions
from .kernels import DAY
from .store import ExperienceData, Store
from .text import clean_text


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
        xq = np.asarray(xq, dtype=np.float32)[None, :]
        for attempt in range(2):
            D, I = index.search(xq, max(cfg.fetch_k, k))
            # Scored and picked over the tenant's columns held by the process, the candidates' vectors from the index
            # that found them; the picks' rows held, or read in one statement. Another tenant's id, or one forgotten
            # since the index was read, is not among them.
            try:
                got = self.rows.pick(tenant, stamp, I[0], D[0], index, now=time.time() if now is None else now,
                                     config=cfg, k=k)
                break
            except KeyError:  # a database's index, changed by another process between the search and its vectors
                if attempt:
                    raise
        return [self._hit(r, float(c), float(a), float(s)) for r, c, a, s in zip(got.rows, got.cos.tolist(),
                                                                                 got.age.tolist(), got.scores.tolist())]

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
