"""`VectorMemory`: the facade that composes the store, the per-tenant indexes, distillation and kernels."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import kernels
from .config import MemoryConfig
from .distill import (
    Candidate,
    Neighbour,
    agree,
    content_hash,
    distill,
    leading_paragraph,
    normalize,
    plan_merge,
    split_instruction,
    text_hash,
)
from .embedding import Embedder
from .errors import DimensionMismatchError, LogFormatError
from .index import Index, choose_kind, load_index, make_index
from .logs import Interaction, Rejected, parse_record, read_jsonl, write_rejected
from .stats import Stats, compute_stats
from .store import AdapterData, ExperienceData, Store, Tx

logger = logging.getLogger(__name__)
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


@dataclass
class IngestReport:
    """What one ingest call did."""

    read: int = 0  # records seen, rejected ones included
    stored: int = 0  # new interactions written
    skipped: int = 0  # interactions already in the memory (re-ingest changes nothing)
    rejected: int = 0  # records that could not be read
    experiences: int = 0  # new experiences
    merged: int = 0  # candidates merged into an existing experience (duplicates)
    conflicts: int = 0  # candidates that contradicted a near-duplicate's answer
    filtered: int = 0  # new interactions that taught nothing confident (noise)
    errors: list[str] = field(default_factory=list)  # one line per rejected record
    rejected_file: str | None = None  # where the rejected lines were written for repair

    def to_json(self) -> dict[str, object]:
        return dict(vars(self))


class VectorMemory:
    """A tenant-isolated memory of experiences: SQL rows (the truth) plus one vector index per tenant.

    Args:
        home: folder for the SQLite file (unless `db_url` is given) and the index files.
        embedder: turns text into unit vectors (`logmem.model.default_embedder()` for MiniLM).
        db_url: any SQLAlchemy URL; default `sqlite:///<home>/memory.db`.
        config: scoring, filtering and index settings.
    """

    def __init__(self, home: str | Path, *, embedder: Embedder, db_url: str | None = None,
                 config: MemoryConfig | None = None) -> None:
        self.home = Path(home)
        (self.home / "index").mkdir(parents=True, exist_ok=True)
        self.config = config or MemoryConfig()
        self.embedder = embedder
        self.d = embedder.dim
        self.store = Store(db_url or f"sqlite:///{self.home / 'memory.db'}")
        self.store.check_meta(embedder=embedder.name, dim=self.d)
        self._indexes: dict[str, tuple[Index, int]] = {}  # tenant -> (index, generation it reflects)
        self._instructions: dict[str, set[str]] = {}

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> VectorMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- ingest -----------------------------------------------------------------------------
    def ingest(self, records: Iterable[Interaction | dict | Rejected], *, format: str = "auto",
               tenant: str | None = None, progress: bool = False, total: int | None = None) -> IngestReport:
        """Store interactions and distil them into experiences, one transaction per batch.

        Records already stored (same tenant and id) are skipped, so ingesting twice changes nothing.
        Unreadable records are counted and reported, never stored; the valid ones are stored all the same.
        """
        report = IngestReport()
        batch: list[Interaction] = []
        bar = tqdm(total=total, unit="rec", desc="ingest", disable=not progress)
        try:
            for rec in records:
                report.read += 1
                bar.update(1)
                item = rec if isinstance(rec, Rejected) else self._parse(rec, format, tenant)
                if isinstance(item, Rejected):
                    report.rejected += 1
                    report.errors.append(item.error.describe())
                    continue
                batch.append(item)
                if len(batch) >= self.config.batch_size:
                    self._ingest_batch(batch, report)
                    batch = []
            if batch:
                self._ingest_batch(batch, report)
        finally:
            bar.close()
            self.save()
        return report

    def ingest_file(self, path: str | Path, *, format: str = "auto", tenant: str | None = None,
                    progress: bool = False, rejected_path: str | Path | None = None) -> IngestReport:
        """Ingest a JSONL file; rejected lines go to `rejected_path` (default `<path>.rejected.jsonl`)."""
        path = Path(path)
        rejected: list[Rejected] = []

        def keep_rejected() -> Iterable[Interaction | Rejected]:
            for item in read_jsonl(path, format=format, tenant=tenant):
                if isinstance(item, Rejected):
                    rejected.append(item)
                yield item

        total = _count_lines(path) if progress else None
        report = self.ingest(keep_rejected(), progress=progress, total=total)
        if rejected:
            side = Path(rejected_path) if rejected_path else path.with_name(path.name + ".rejected.jsonl")
            side.unlink(missing_ok=True)
            write_rejected(rejected, side)
            report.rejected_file = str(side)
            logger.warning("%d line(s) of %s rejected; written to %s", len(rejected), path, side)
        return report

    def _parse(self, rec: Interaction | dict, format: str, tenant: str | None) -> Interaction | Rejected:
        try:
            return parse_record(rec, format=format, tenant=tenant)
        except LogFormatError as exc:
            return Rejected(exc, json.dumps(rec, default=str) if isinstance(rec, dict) else repr(rec))

    def _ingest_batch(self, batch: list[Interaction], report: IngestReport) -> None:
        by_tenant: dict[str, list[Interaction]] = {}
        for it in batch:
            by_tenant.setdefault(it.tenant, []).append(it)
        for tenant, items in by_tenant.items():
            try:
                self._ingest_tenant(tenant, items, report)
            except BaseException:
                self._indexes.pop(tenant, None)  # may hold vectors of the rolled-back transaction
                self._instructions.pop(tenant, None)
                raise

    def _ingest_tenant(self, tenant: str, items: list[Interaction], report: IngestReport) -> None:
        index, seen = self._index(tenant)
        now = time.time()
        with self.store.transaction() as tx:
            known = self.store.known_interactions(tx, tenant=tenant, ext_ids=[it.id for it in items])
            fresh: dict[str, Interaction] = {}
            for it in items:
                if it.id in known or it.id in fresh:
                    report.skipped += 1
                else:
                    fresh[it.id] = it
            if not fresh:
                return
            cands = {i: distill(it, self.config, now=now) for i, it in fresh.items()}
            self._learn_instructions(tx, tenant, [c for cs in cands.values() for c in cs])
            vectors = self._embed_new(tx, tenant, [c for cs in cands.values() for c in cs])
            for ext_id, it in fresh.items():
                pk = self.store.add_interaction(tx, record=it.to_json(), status="filtered")
                report.stored += 1
                if it.metadata.get("retrieved"):
                    self.store.add_retrievals(tx, tenant=tenant, interaction_id=pk,
                                              experience_ids=it.metadata["retrieved"])
                added = merged = 0
                for c in cands[ext_id]:
                    outcome = self._place(tx, tenant, index, c, vectors, pk)
                    added += outcome == "new"
                    merged += outcome in ("merge", "exact")
                    report.conflicts += outcome == "conflict"
                report.experiences += added
                report.merged += merged
                status = "experience" if added else "merged" if merged else "filtered"
                report.filtered += status == "filtered"
                self.store.set_status(tx, interaction_id=pk, status=status)
            generation = self.store.bump_generation(tx, tenant=tenant)
        if generation == seen + 1:
            self._indexes[tenant] = (index, generation)
        else:  # another process wrote to this tenant meanwhile: rebuild from SQL on next use
            self._indexes.pop(tenant, None)

    def _learn_instructions(self, tx: Tx, tenant: str, cands: Sequence[Candidate]) -> None:
        if not self.config.strip_shared_instructions:
            return
        counts: dict[str, tuple[str, int]] = {}
        for c in cands:
            head = leading_paragraph(c.trigger)
            if head is not None:
                h = text_hash(head)
                counts[h] = (head, counts.get(h, (head, 0))[1] + 1)
        if counts:
            self.store.count_instructions(tx, tenant=tenant, counts=counts)
            self._instructions[tenant] = self.store.instructions(tenant=tenant, min_count=self.config.shared_min_count,
                                                                 tx=tx)

    def _tally(self, record: dict) -> dict[str, int]:
        """The leading paragraphs (hash -> n) that ingesting `record` added to its tenant's tally."""
        counts: dict[str, int] = {}
        if not self.config.strip_shared_instructions:
            return counts
        for c in distill(parse_record(record, format="native"), self.config):
            head = leading_paragraph(c.trigger)
            if head is not None:
                counts[text_hash(head)] = counts.get(text_hash(head), 0) + 1
        return counts

    def _embed_text(self, tenant: str, text: str) -> tuple[str | None, str]:
        return split_instruction(text, self._known_instructions(tenant))

    def _embed_new(self, tx: Tx, tenant: str, cands: Sequence[Candidate]) -> dict[str, np.ndarray]:
        """Vectors for the distinct request bodies of candidates that are not exact duplicates."""
        texts = sorted({self._embed_text(tenant, c.trigger)[1] for c in cands
                        if self.store.experience_by_hash(tx, tenant=tenant, content_hash=c.content_hash) is None})
        if not texts:
            return {}
        xb = self.embedder.encode(texts)
        if xb.shape != (len(texts), self.d):
            raise DimensionMismatchError(f"embedder returned shape {xb.shape}, expected ({len(texts)}, {self.d})")
        return dict(zip(texts, np.asarray(xb, dtype=np.float32)))

    def _place(self, tx: Tx, tenant: str, index: Index, c: Candidate, vectors: dict[str, np.ndarray],
               interaction_id: int) -> str:
        """Store one candidate as a new experience, a merge, or a conflict; return which."""
        same = self.store.experience_by_hash(tx, tenant=tenant, content_hash=c.content_hash)
        if same is not None:
            self.store.merge_into(tx, experience_id=same, interaction_id=interaction_id, timestamp=c.timestamp,
                                  success=c.success)
            return "exact"
        instruction, body = self._embed_text(tenant, c.trigger)
        xq = vectors[body]
        D, I = index.search(xq[None, :], 4)
        rows = self.store.get_experiences(tx, tenant=tenant, ids=[i for i in I[0] if i >= 0])
        near = [Neighbour(int(i), float(s), rows[i].response, rows[i].instruction)
                for s, i in zip(D[0], I[0]) if i in rows]
        decision, target = plan_merge(c, instruction, near, self.config)
        if decision == "merge" and target is not None:
            self.store.merge_into(tx, experience_id=target, interaction_id=interaction_id, timestamp=c.timestamp,
                                  success=c.success)
        elif decision == "conflict" and target is not None:
            self.store.add_conflict(tx, experience_id=target, interaction_id=interaction_id, response=c.response,
                                    swap_hash=content_hash(rows[target].trigger, c.response))
        else:
            new_id = self.store.add_experience(
                tx, tenant=tenant, user=c.user, content_hash=c.content_hash, instruction=instruction,
                trigger=c.trigger, response=c.response, lesson=c.lesson, rejected=c.rejected, vector=xq,
                alpha=1.0 + c.success, beta=1.0 + (1.0 - c.success), timestamp=c.timestamp,
                interaction_id=interaction_id)
            index.add(np.array([new_id], dtype=np.int64), xq[None, :])
        return decision

    # --- search -----------------------------------------------------------------------------
    def search(self, text: str, k: int = 5, *, tenant: str = "default", now: float | None = None) -> list[Hit]:
        """The `k` best experiences for a request: faiss candidates, Numba scoring, MMR diversity."""
        index, _ = self._index(tenant)
        if len(index) == 0 or k <= 0:
            return []
        _, body = self._embed_text(tenant, text)
        return self.search_vector(self.embedder.encode([body])[0], k, tenant=tenant, now=now)

    def search_vector(self, xq: np.ndarray, k: int = 5, *, tenant: str = "default",
                      now: float | None = None) -> list[Hit]:
        """`search` for an already embedded request `xq` (float32, (d,))."""
        index, _ = self._index(tenant)
        if len(index) == 0 or k <= 0:
            return []
        cfg = self.config
        D, I = index.search(np.asarray(xq, dtype=np.float32)[None, :], max(cfg.fetch_k, k))
        ids = [int(i) for i in I[0] if i >= 0]
        rows = self.store.get_experiences(tenant=tenant, ids=ids)
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
        xb = np.vstack([r.vector for _, r in found])
        picked = kernels.mmr_select(scores, xb, k, cfg.mmr_lambda)
        return [self._hit(found[j][1], float(cos[j]), float(age[j]), float(scores[j])) for j in picked]

    def neighbours(self, text: str, k: int = 10, *, tenant: str = "default") -> list[Hit]:
        """The `k` nearest experiences by trigger cosine alone (no utility, recency or MMR): a plain kNN."""
        index, _ = self._index(tenant)
        if len(index) == 0 or k <= 0:
            return []
        _, body = self._embed_text(tenant, text)
        D, I = index.search(self.embedder.encode([body]), k)
        rows = self.store.get_experiences(tenant=tenant, ids=[int(i) for i in I[0] if i >= 0])
        now = time.time()
        return [self._hit(rows[i], float(s), (now - rows[i].last_seen_at) / DAY, float(s))
                for s, i in zip(D[0], I[0]) if i in rows]

    def went_well(self, experiences: Sequence[ExperienceData], *, tenant: str = "default") -> dict[int, list[str]]:
        """Per experience, the other requests that had it in their prompt and went well: the answer they got
        was judged a success (at any confidence) and agrees with the experience's response. In log order,
        without repeats; consolidation trains on them as more inputs for the experience's response."""
        loose = replace(self.config, min_confidence=0.0)
        found: dict[int, list[str]] = {}
        records = self.store.retrieving_records(tenant=tenant, experience_ids=[e.id for e in experiences])
        for e in experiences:
            seen = {normalize(e.trigger)}
            for record in records.get(e.id, []):
                for c in distill(parse_record(record, format="native"), loose):
                    if normalize(c.trigger) not in seen and agree(c.response, e.response, self.config.agree_threshold):
                        seen.add(normalize(c.trigger))
                        found.setdefault(e.id, []).append(c.trigger)
        return found

    def _hit(self, r: ExperienceData, cos: float, age: float, score: float) -> Hit:
        cfg = self.config
        return Hit(id=r.id, score=score, sim=cfg.w_sim * cos, util=cfg.w_util * (r.utility - 0.5),
                   rec=cfg.w_rec * 2.0 ** (-max(age, 0.0) / cfg.half_life_days), cos=cos, utility=r.utility,
                   trigger=r.trigger, response=r.response, lesson=r.lesson, rejected=r.rejected,
                   support=r.support, tenant=r.tenant, instruction=r.instruction)

    # --- outcomes, forgetting, stats --------------------------------------------------------
    def record_outcome(self, experience_ids: Sequence[int], success: bool | float, *,
                       tenant: str = "default") -> int:
        """Credit an outcome to the experiences that conditioned an answer; returns how many were updated."""
        s = float(success)
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"success must be a bool or a probability in [0, 1], got {success!r}")
        return self.store.record_outcome(tenant=tenant, ids=experience_ids, success=s)

    def forget(self, *, id: int | None = None, user: str | None = None, tenant: str | None = None) -> dict[str, int]:
        """Remove an experience, all of a user's data, or a whole tenant: rows, vectors and text.

        The affected tenants' index files are rewritten from what remains in SQL.
        """
        if id is None and user is None and tenant is None:
            raise ValueError("forget needs id=, user= or tenant=")
        counts, changed = self.store.forget(experience_id=id, user=user, tenant=tenant, tally=self._tally)
        for t in changed:
            self._indexes.pop(t, None)
            self._instructions.pop(t, None)
            self._index(t)
        self.save()
        return counts

    def stats(self, tenant: str | None = None) -> Stats:
        tenants = [tenant] if tenant is not None else self.store.tenants()
        indexes = {t: self._index(t)[0] for t in tenants}
        return compute_stats(self.store.counts(tenant=tenant), indexes)

    # --- adapters (versions live in the store; training is logmem.model.consolidate's) -------
    def adapters(self, tenant: str = "default") -> list[AdapterData]:
        """The tenant's adapters, oldest first."""
        return self.store.adapters(tenant=tenant)

    def active_adapter(self, tenant: str = "default") -> AdapterData | None:
        """The adapter the tenant's generator loads, or None for the base model."""
        return self.store.active_adapter(tenant=tenant)

    def activate_adapter(self, version: str, *, tenant: str = "default", force: bool = False) -> AdapterData:
        """Make `version` active (a rejected one never, a stale one only with `force`)."""
        return self.store.activate_adapter(tenant=tenant, version=version, force=force)

    def rollback_adapter(self, tenant: str = "default") -> str | None:
        """Back to the adapter active before (None: the base model)."""
        return self.store.rollback_adapter(tenant=tenant)

    # --- index lifecycle --------------------------------------------------------------------
    def _index_path(self, tenant: str) -> Path:
        return self.home / "index" / hashlib.sha256(tenant.encode()).hexdigest()[:16]

    def _index(self, tenant: str) -> tuple[Index, int]:
        """The tenant's index, loaded from disk if it matches SQL's generation, else rebuilt from SQL."""
        generation = self.store.generation(tenant=tenant)
        cached = self._indexes.get(tenant)
        if cached is not None and cached[1] == generation:
            return cached
        path = self._index_path(tenant)
        index = None
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            if meta["generation"] == generation and meta["d"] == self.d:
                index = load_index(path.with_suffix(".idx"), meta["kind"], self.config)
        except (OSError, ValueError, KeyError, RuntimeError):
            index = None
        if index is None:
            index = self._rebuild(tenant)
        self._indexes[tenant] = (index, generation)
        return self._indexes[tenant]

    def _rebuild(self, tenant: str) -> Index:
        ids, xb = self.store.vectors(tenant=tenant, d=self.d)
        index = make_index(choose_kind(len(ids), self.config), self.d, self.config)
        if len(ids):
            logger.info("rebuilding the %s index of tenant %r from %d stored vectors", index.kind, tenant, len(ids))
            index.add(ids, xb)
        return index

    def save(self) -> None:
        """Write each loaded index whose contents changed; switch to HNSW where a tenant outgrew flat."""
        for tenant, (index, generation) in list(self._indexes.items()):
            want = choose_kind(len(index), self.config)
            if want != index.kind:
                index = self._rebuild(tenant)
                self._indexes[tenant] = (index, generation)
            path = self._index_path(tenant)
            meta_path = path.with_suffix(".json")
            try:
                if json.loads(meta_path.read_text()).get("generation") == generation:
                    continue
            except (OSError, ValueError):
                pass
            tmp = path.with_suffix(".idx.tmp")
            index.save(tmp)
            os.replace(tmp, path.with_suffix(".idx"))
            meta_tmp = path.with_suffix(".json.tmp")
            meta_tmp.write_text(json.dumps({"tenant": tenant, "generation": generation, "kind": index.kind,
                                            "d": self.d, "n": len(index)}))
            os.replace(meta_tmp, meta_path)

    def _known_instructions(self, tenant: str) -> set[str]:
        if tenant not in self._instructions:
            self._instructions[tenant] = self.store.instructions(tenant=tenant,
                                                                 min_count=self.config.shared_min_count)
        return self._instructions[tenant]


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)
