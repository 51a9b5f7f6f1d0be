"""Search: the experiences that best answer a request. The tenant's index gives candidates by cosine, the Numba
kernels score them (similarity, utility, recency) and pick a diverse `k` (MMR), all from one read of the
candidates' rows."""

from __future__ import annotations

import threading
import time
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


class Searcher:
    """Searches a memory's per-tenant indexes. `lock` is the memory's: no search reads an index while another
    thread of the process changes it."""

    def __init__(self, *, store: Store, indexes: TenantIndexes, config: MemoryConfig, embedder: Embedder,
                 instructions: SharedInstructions, lock: threading.RLock) -> None:
        self.store, self.indexes, self.config, self.embedder = store, indexes, config, embedder
        self.instructions, self.lock = instructions, lock

    def search(self, text: str, k: int = 5, *, tenant: str = "default", now: float | None = None) -> list[Hit]:
        """The `k` best experiences for a request: faiss candidates, Numba scoring, MMR diversity. The request passes
        the text boundary first (`clean_text`): the embedder never sees text it did not pass."""
        if k <= 0:
            return []
        text = clean_text(text)
        with self.lock:  # brought up to SQL's generation once (one read), before embedding: none if empty
            index = self.indexes.get(tenant)
            if is_empty(index):
                return []
        _, body = self.instructions.split(tenant, text)
        xq = self.embedder.encode([body])[0]
        with self.lock:  # the index of a few ms ago, unless this process has replaced it meanwhile
            if self.indexes.held(tenant) is not index:
                index = self.indexes.get(tenant)
            return self._search_in(index, xq, k, tenant, now)

    def search_vector(self, xq: np.ndarray, k: int = 5, *, tenant: str = "default",
                      now: float | None = None) -> list[Hit]:
        """`search` for an already embedded request `xq` (float32, (d,))."""
        with self.lock:
            index = self.indexes.get(tenant)
            if k <= 0 or is_empty(index):
                return []
            return self._search_in(index, xq, k, tenant, now)

    def _search_in(self, index: Index, xq: np.ndarray, k: int, tenant: str, now: float | None) -> list[Hit]:
        cfg = self.config
        D, I = index.search(np.asarray(xq, dtype=np.float32)[None, :], max(cfg.fetch_k, k))
        # One read of the candidates' rows (scoring columns and texts: at fetch_k rows, one statement costs less
        # than two); another tenant's id, or one forgotten since the index was read, is not among them.
        rows = self.store.get_experiences(tenant=tenant, ids=[int(i) for i in I[0] if i >= 0])
        found = [(float(s), rows[i]) for s, i in zip(D[0], I[0])
                 if i in rows and (cfg.retrieve_consolidated or rows[i].consolidated_in is None)]
        if not found:
            return []
        now = time.time() if now is None else now
        cos = np.array([s for s, _ in found], dtype=np.float32)
        util = np.array([r.utility for _, r in found], dtype=np.float32)
        age = np.array([(now - r.last_seen_at) / DAY for _, r in found], dtype=np.float32)
        scores = kernels.combined_score(cos, util, age, cfg.w_sim, cfg.w_util, cfg.w_rec, cfg.half_life_days,
                                        cfg.min_sim)
        xb = np.stack([r.vector for _, r in found])
        picked = kernels.mmr_select(scores, xb, k, cfg.mmr_lambda)
        return [self._hit(found[j][1], float(cos[j]), float(age[j]), float(scores[j])) for j in picked]

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
        cfg = self.config
        return Hit(id=r.id, score=score, sim=cfg.w_sim * cos, util=cfg.w_util * (r.utility - 0.5),
                   rec=cfg.w_rec * 2.0 ** (-max(age, 0.0) / cfg.half_life_days), cos=cos, utility=r.utility,
                   trigger=r.trigger, response=r.response, lesson=r.lesson, rejected=r.rejected,
                   support=r.support, tenant=r.tenant, instruction=r.instruction)
