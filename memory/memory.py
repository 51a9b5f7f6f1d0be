"""`VectorMemory`: the facade that composes the store, the per-tenant indexes, distillation and kernels."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

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
    thread_hash,
)
from .embedding import Embedder
from .errors import DimensionMismatchError, LogFormatError, NotFoundError
from .index import Index
from .indexes import Pending, TenantIndexes, is_empty
from .logs import Interaction, Rejected, parse_record, read_jsonl, write_rejected
from .outcome import explicit_signal, judge
from .stats import Stats, compute_stats
from .store import AdapterData, AnswerData, ExperienceData, ServingModeData, Store, Tx

logger = logging.getLogger(__name__)
DAY = 86_400.0
P = ParamSpec("P")
R = TypeVar("R")


def _serialized(method: Callable[Concatenate[VectorMemory, P], R]) -> Callable[Concatenate[VectorMemory, P], R]:
    """Run the method under the memory's lock: threads of one process (a server's request handlers, its job
    worker) never change an index while another searches it, nor interleave a tenant's cache updates."""
    @functools.wraps(method)
    def run(self: VectorMemory, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            return method(self, *args, **kwargs)

    return run


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


@dataclass
class FeedbackResult:
    """What judging one served answer did."""

    interaction_id: str
    kind: str  # the feedback kind, or "follow_up" when the conversation's next turn judged it
    success: float  # the outcome credited
    credited: int = 0  # experiences whose utility it updated (those that conditioned the answer)
    experiences: int = 0  # new experiences it taught
    merged: int = 0  # candidates merged into existing experiences
    conflicts: int = 0  # candidates that contradicted a near-duplicate's answer
    status: str = "answered"  # the interaction's status after it: answered, experience, merged or filtered
    duplicate: bool = False  # the event was seen before (a retry): nothing changed

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
        self.indexes = TenantIndexes(self.home / "index", d=self.d, config=self.config, source=self.store)
        self._instructions: dict[str, set[str]] = {}
        self._lock = threading.RLock()

    def close(self) -> None:
        """Write the changed indexes, then close the database."""
        try:
            self.save()
        finally:
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
            self.checkpoint()
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

    @_serialized
    def _ingest_batch(self, batch: list[Interaction], report: IngestReport) -> None:
        by_tenant: dict[str, list[Interaction]] = {}
        for it in batch:
            by_tenant.setdefault(it.tenant, []).append(it)
        for tenant, items in by_tenant.items():
            part = self.store.retry_on_conflict(functools.partial(self._ingest_attempt, tenant, items))
            for name in ("stored", "skipped", "experiences", "merged", "conflicts", "filtered"):
                setattr(report, name, getattr(report, name) + getattr(part, name))

    def _ingest_attempt(self, tenant: str, items: list[Interaction]) -> IngestReport:
        """`_ingest_tenant` in one transaction, counted apart: an attempt rolled back counts nothing."""
        part = IngestReport()
        try:
            self._ingest_tenant(tenant, items, part)
        except BaseException:
            self._instructions.pop(tenant, None)  # may hold instructions of the rolled-back transaction
            raise
        return part

    def _ingest_tenant(self, tenant: str, items: list[Interaction], report: IngestReport) -> None:
        index = self.indexes.pending(tenant)
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
                self._learn(tx, tenant, index, pk, it, cands[ext_id], vectors, report)
            self.indexes.stage(tx, index)
            generation = self.store.bump_generation(tx, tenant=tenant, added=index.added()[0])
        self.indexes.committed(index, generation)

    def _learn(self, tx: Tx, tenant: str, index: Pending, pk: int, it: Interaction, cands: Sequence[Candidate],
               vectors: dict[str, np.ndarray], report: IngestReport, status: str | None = None) -> str:
        """Place one stored interaction's candidates (new experience, merge or conflict) and set its status
        (the better of `status`, what it had, and what these candidates made of it)."""
        if it.metadata.get("retrieved"):
            self.store.add_retrievals(tx, tenant=tenant, interaction_id=pk, experience_ids=it.metadata["retrieved"])
        added = merged = 0
        for c in cands:
            outcome = self._place(tx, tenant, index, c, vectors, pk)
            added += outcome == "new"
            merged += outcome in ("merge", "exact")
            report.conflicts += outcome == "conflict"
        report.experiences += added
        report.merged += merged
        new = "experience" if added else "merged" if merged else "filtered"
        rank = ["answered", "filtered", "merged", "experience"]
        final = max(new, status or "answered", key=rank.index)
        report.filtered += final == "filtered"
        self.store.set_status(tx, interaction_id=pk, status=final)
        return final

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

    def _place(self, tx: Tx, tenant: str, index: Pending, c: Candidate, vectors: dict[str, np.ndarray],
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
            corrects = c.rejected is not None and agree(c.rejected, rows[target].response, self.config.agree_threshold)
            self.store.add_conflict(tx, experience_id=target, interaction_id=interaction_id, response=c.response,
                                    swap_hash=content_hash(rows[target].trigger, c.response), wins_ties=corrects,
                                    lesson=c.lesson, rejected=c.rejected)
        else:
            new_id = self.store.add_experience(
                tx, tenant=tenant, user=c.user, content_hash=c.content_hash, instruction=instruction,
                trigger=c.trigger, response=c.response, lesson=c.lesson, rejected=c.rejected, vector=xq,
                alpha=1.0 + c.success, beta=1.0 + (1.0 - c.success), timestamp=c.timestamp,
                interaction_id=interaction_id)
            index.add(np.array([new_id], dtype=np.int64), xq[None, :])
        return decision

    # --- served answers: logged when given, judged later by feedback or by the next turn ----------
    def log_answer(self, *, tenant: str, interaction_id: str, messages: Sequence[dict[str, str]], answer: str,
                   hits: Sequence[Hit], user: str | None = None, session: str | None = None,
                   adapter: str | None = None, details: dict[str, Any] | None = None) -> None:
        """Keep a served answer in SQL (an `answered` interaction) so that feedback can reach it from any
        process, any time later; count one use of each experience that conditioned it."""
        conversation = [*[{"role": m["role"], "content": m["content"]} for m in messages],
                        {"role": "assistant", "content": answer}]
        record = {"id": interaction_id, "tenant": tenant, "user": user, "session": session, "timestamp": time.time(),
                  "messages": conversation, "feedback": [],
                  "metadata": {"retrieved": [h.id for h in hits]} if hits else {}}
        served = {"turn": len(messages), "experiences": [h.parts() for h in hits], **(details or {})}
        self.store.add_answer(record=record, thread_key=thread_hash(conversation), adapter=adapter,
                              served=served, used=[h.id for h in hits])

    def answer(self, interaction_id: str, *, tenant: str = "default") -> AnswerData:
        """A served answer with its feedback so far. Raises NotFoundError outside `tenant`."""
        return self.store.get_answer(tenant=tenant, ext_id=interaction_id)

    def feedback(self, interaction_id: str, kind: str, *, tenant: str = "default", value: float | None = None,
                 text: str | None = None, event_id: str | None = None) -> FeedbackResult:
        """Judge a served answer: credit the experiences that conditioned it and distil what it teaches.

        Each `event_id` counts once (default: made from the event's content, so a retried call is recognised).
        A correction's `text` is the right answer: it becomes an experience with the served answer as
        `rejected`, and where the answer came from an experience it conflicts with, it wins at equal support.
        """
        success, _ = explicit_signal(kind, value)
        if kind == "correction" and not (text or "").strip():
            raise ValueError("a correction needs text: the right answer")
        event: dict[str, Any] = {"kind": kind, **({"value": float(value)} if value is not None else {}),
                                 **({"text": text} if text else {})}
        event_id = event_id or text_hash(json.dumps(event, sort_keys=True))[:32]
        result = FeedbackResult(interaction_id, kind, success)

        def judge_it(tx: Tx, answer: AnswerData, record: dict[str, Any]) -> dict[str, Any] | None:
            if not self.store.add_feedback_event(tx, interaction_pk=answer.pk, event_id=event_id, kind=kind):
                result.duplicate, result.status = True, answer.status
                return None
            turn = int(answer.served["turn"])
            record["feedback"].append({"turn": turn, **event})
            if kind == "correction":
                record["messages"] += [{"role": "user", "content": f"Correction: {text}"},
                                       {"role": "assistant", "content": str(text)}]
                record["feedback"].append({"turn": len(record["messages"]) - 1, "kind": "like"})
            used = record.get("metadata", {}).get("retrieved", [])
            result.credited = self.store.record_outcome(tx, tenant=tenant, ids=used, success=success) if used else 0
            return {"turn": turn, **event}

        return self.store.retry_on_conflict(lambda: self._rejudge(interaction_id, tenant, judge_it, result))

    def follow_up(self, messages: Sequence[dict[str, str]], *, tenant: str = "default") -> FeedbackResult | None:
        """Judge the served answer that a new request continues, as ingested logs are judged: `messages`
        quote an earlier conversation and its answer, then add a user turn that corrects, thanks or moves on.
        Only an answer nobody has rated yet is judged this way (explicit feedback outranks it). Returns what
        it did, or None when `messages` continue no such answer."""
        if len(messages) < 3 or messages[-1]["role"] != "user" or messages[-2]["role"] != "assistant":
            return None
        found = self.store.answer_by_thread(tenant=tenant, thread_key=thread_hash(messages[:-1]))
        if found is None:
            return None
        result = FeedbackResult(found, "follow_up", 0.0)

        def judge_it(tx: Tx, answer: AnswerData, record: dict[str, Any]) -> dict[str, Any] | None:
            if answer.status != "answered":
                result.duplicate, result.status = True, answer.status  # judged meanwhile (feedback, a follow-up)
                return None
            record["messages"].append({"role": "user", "content": messages[-1]["content"]})
            outcome = next(o for o in judge(parse_record(record, format="native")) if o.turn == answer.served["turn"])
            result.success = outcome.success
            used = record.get("metadata", {}).get("retrieved", [])
            if used:  # weaker evidence than a rating: credited in proportion to its confidence
                result.credited = self.store.record_outcome(tx, tenant=tenant, ids=used, success=outcome.success,
                                                            weight=outcome.confidence)
            return None

        return self.store.retry_on_conflict(lambda: self._rejudge(found, tenant, judge_it, result))

    @_serialized
    def _rejudge(self, interaction_id: str, tenant: str,
                 change: Callable[[Tx, AnswerData, dict[str, Any]], dict[str, Any] | None],
                 result: FeedbackResult) -> FeedbackResult:
        """In one transaction: lock the served answer, let `change` update its record (and return the feedback
        row to add), then place the experiences the changed record teaches that it did not teach before."""
        try:
            return self._rejudge_once(interaction_id, tenant, change, result)
        except BaseException:
            self._instructions.pop(tenant, None)  # may hold instructions of the rolled-back transaction
            raise

    def _rejudge_once(self, interaction_id: str, tenant: str,
                      change: Callable[[Tx, AnswerData, dict[str, Any]], dict[str, Any] | None],
                      result: FeedbackResult) -> FeedbackResult:
        index = self.indexes.pending(tenant)
        report = IngestReport()
        result.duplicate = False
        with self.store.transaction() as tx:
            answer = self.store.get_answer(tx, tenant=tenant, ext_id=interaction_id, lock=True)
            before = answer.record
            record = json.loads(json.dumps(before))
            feedback_row = change(tx, answer, record)
            if result.duplicate:
                return result
            now = time.time()
            taught = {c.content_hash for c in distill(parse_record(before, format="native"), self.config, now=now)
                      } if answer.status != "answered" else set()
            cands = [c for c in distill(parse_record(record, format="native"), self.config, now=now)
                     if c.content_hash not in taught]
            self.store.update_record(tx, interaction_pk=answer.pk, record=record, feedback=feedback_row)
            self._learn_instructions(tx, tenant, cands)
            vectors = self._embed_new(tx, tenant, cands)
            it = parse_record(record, format="native")
            result.status = self._learn(tx, tenant, index, answer.pk, it if answer.status == "answered" else
                                        replace(it, metadata={}), cands, vectors, report, status=answer.status)
            self.indexes.stage(tx, index)
            generation = (self.store.bump_generation(tx, tenant=tenant, added=index.added()[0]) if cands
                          else index.generation)
        if cands:
            self.indexes.committed(index, generation)
            self.checkpoint()
        result.experiences, result.merged, result.conflicts = report.experiences, report.merged, report.conflicts
        return result

    # --- search -----------------------------------------------------------------------------
    def search(self, text: str, k: int = 5, *, tenant: str = "default", now: float | None = None) -> list[Hit]:
        """The `k` best experiences for a request: faiss candidates, Numba scoring, MMR diversity."""
        if k <= 0:
            return []
        with self._lock:  # brought up to SQL's generation once (one read), before embedding: none if empty
            index = self.indexes.get(tenant)
            if is_empty(index):
                return []
        _, body = self._embed_text(tenant, text)
        xq = self.embedder.encode([body])[0]
        with self._lock:  # the index of a few ms ago, unless this process has replaced it meanwhile
            if self.indexes.held(tenant) is not index:
                index = self.indexes.get(tenant)
            return self._search_in(index, xq, k, tenant, now)

    @_serialized
    def search_vector(self, xq: np.ndarray, k: int = 5, *, tenant: str = "default",
                      now: float | None = None) -> list[Hit]:
        """`search` for an already embedded request `xq` (float32, (d,))."""
        index = self.indexes.get(tenant)
        if k <= 0 or is_empty(index):
            return []
        return self._search_in(index, xq, k, tenant, now)

    def _search_in(self, index: Index, xq: np.ndarray, k: int, tenant: str, now: float | None) -> list[Hit]:
        cfg = self.config
        D, I = index.search(np.asarray(xq, dtype=np.float32)[None, :], max(cfg.fetch_k, k))
        # Score from the candidates' columns; load whole rows (the texts) only for the k picked.
        cols = self.store.candidates(tenant=tenant, ids=[int(i) for i in I[0] if i >= 0])
        found = [(float(s), cols[i]) for s, i in zip(D[0], I[0])
                 if i in cols and (cfg.retrieve_consolidated or not cols[i].consolidated)]
        if not found:
            return []
        now = time.time() if now is None else now
        cos = np.array([s for s, _ in found], dtype=np.float32)
        util = np.array([c.utility for _, c in found], dtype=np.float32)
        age = np.array([(now - c.last_seen_at) / DAY for _, c in found], dtype=np.float32)
        scores = kernels.combined_score(cos, util, age, cfg.w_sim, cfg.w_util, cfg.w_rec, cfg.half_life_days,
                                        cfg.min_sim)
        xb = np.frombuffer(b"".join(c.vector for _, c in found), dtype=np.float32).reshape(len(found), -1)
        picked = kernels.mmr_select(scores, xb, k, cfg.mmr_lambda)
        rows = self.store.get_experiences(tenant=tenant, ids=[found[j][1].id for j in picked])
        return [self._hit(rows[found[j][1].id], float(cos[j]), float(age[j]), float(scores[j]))
                for j in picked if found[j][1].id in rows]  # one forgotten in between is left out

    @_serialized
    def neighbours(self, text: str, k: int = 10, *, tenant: str = "default") -> list[Hit]:
        """The `k` nearest experiences by trigger cosine alone (no utility, recency or MMR): a plain kNN."""
        index = self.indexes.get(tenant)
        if k <= 0 or is_empty(index):
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

    @_serialized
    def forget(self, *, id: int | None = None, user: str | None = None, tenant: str | None = None) -> dict[str, int]:
        """Remove an experience, all of a user's data, or a whole tenant: rows, vectors and text.

        The affected tenants' indexes follow SQL (the removed ids come out); their files are rewritten.
        """
        if id is None and user is None and tenant is None:
            raise ValueError("forget needs id=, user= or tenant=")
        counts, changed = self.store.forget(experience_id=id, user=user, tenant=tenant, tally=self._tally)
        for t in changed:
            self._instructions.pop(t, None)
            self.indexes.get(t)
        self.save()
        return counts

    @_serialized
    def stats(self, tenant: str | None = None) -> Stats:
        tenants = [tenant] if tenant is not None else self.store.tenants()
        indexes = {t: self.indexes.get(t) for t in tenants}
        return compute_stats(self.store.counts(tenant=tenant), indexes)

    def experiences(self, *, tenant: str = "default", sort: str = "utility", descending: bool = True,
                    limit: int = 50, offset: int = 0) -> tuple[int, list[ExperienceData]]:
        """(total, one page) of the tenant's experiences, sorted by utility, uses, support, age or id."""
        total, ids = self.store.experience_page(tenant=tenant, sort=sort, descending=descending, limit=limit,
                                                offset=offset)
        rows = self.store.get_experiences(tenant=tenant, ids=ids)
        return total, [rows[i] for i in ids if i in rows]

    def experience(self, id: int, *, tenant: str = "default") -> ExperienceData:
        """One of the tenant's experiences. Raises NotFoundError for another tenant's or a missing id."""
        found = self.store.get_experiences(tenant=tenant, ids=[id])
        if id not in found:
            raise NotFoundError(f"no experience {id} in tenant {tenant!r}")
        return found[id]

    # --- adapters (versions live in the store; training is logmem.model.consolidate's) -------
    def iter_experiences(self, tenant: str = "default") -> Iterator[ExperienceData]:
        """All of the tenant's experiences, in id order (read in batches)."""
        return self.store.iter_experiences(tenant=tenant)

    def register_adapter(self, *, tenant: str, base_model: str, method: str, seed: int, promoted: bool,
                         metrics: dict[str, Any], covered: Iterable[int], path: str, parent: str | None = None,
                         holdout: Iterable[int] = ()) -> str:
        """Register a trained adapter (inactive), promoted or rejected by its gate, with its lineage: `parent` the
        adapter it was trained on from (None: the base model), `holdout` the experience ids its gate held out.
        Returns its version."""
        return self.store.add_adapter(tenant=tenant, base_model=base_model, method=method, seed=seed,
                                      status="promoted" if promoted else "rejected", metrics=metrics,
                                      covered=covered, path=path, parent=parent, holdout=holdout)

    def mark_consolidated(self, experience_ids: Iterable[int], *, version: str, tenant: str = "default") -> int:
        """Mark the tenant's experiences as consolidated in adapter `version`; returns how many were marked."""
        return self.store.mark_consolidated(tenant=tenant, experience_ids=experience_ids, version=version)

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

    def serving_mode(self, tenant: str = "default") -> ServingModeData | None:
        """What the tenant's jobs measured best and an operator pinned (None: neither yet)."""
        return self.store.serving_mode(tenant=tenant)

    def record_serving_mode(self, *, tenant: str, mode: str, adapter: str | None, metric: str,
                            figures: dict[str, Any], reason: str, job_version: str | None = None) -> None:
        """Keep the serving mode a job measured best, with `adapter` the active adapter it was measured with."""
        self.store.record_serving_mode(tenant=tenant, mode=mode, adapter=adapter, metric=metric, figures=figures,
                                       reason=reason, job_version=job_version)

    # --- index files (the cache in `indexes` keeps them) -------------------------------------
    @_serialized
    def save(self) -> None:
        """Write every loaded index whose contents changed since its file was written."""
        self.indexes.save()

    @_serialized
    def checkpoint(self) -> None:
        """Write the loaded indexes that are due (`MemoryConfig.checkpoint_changes` / `checkpoint_seconds`)."""
        self.indexes.checkpoint()

    def answer_repetition(self, tenant: str = "default") -> float:
        """The share of the tenant's experiences whose answer another experience also gave (1 - distinct /
        total; 0 when empty): near 1 for labels, routes or canned replies, near 0 for free text."""
        total, distinct = self.store.answer_counts(tenant=tenant)
        return 1.0 - distinct / total if total else 0.0

    def _known_instructions(self, tenant: str) -> set[str]:
        if tenant not in self._instructions:
            self._instructions[tenant] = self.store.instructions(tenant=tenant,
                                                                 min_count=self.config.shared_min_count)
        return self._instructions[tenant]


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)
