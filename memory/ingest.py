"""Ingest and merge: logged interactions stored, distilled into candidate experiences, and each candidate placed
as a new experience, merged into a near-duplicate, or kept as a conflict with one, a transaction per tenant and
batch. Feedback that judges a served answer later places what it teaches the same way (`Ingestor.learn`)."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .config import MemoryConfig
from .distill import (
    Candidate,
    Neighbour,
    agree,
    content_hash,
    distill,
    plan_merge,
    split_instruction,
    text_hash,
)
from .embedding import Embedder
from .errors import DimensionMismatchError, LogFormatError
from .indexes import Pending, TenantIndexes
from .instructions import SharedInstructions, count_heads
from .logs import Interaction, Rejected, parse_record, read_jsonl, write_rejected
from .store import Store, Tx

logger = logging.getLogger(__name__)
AHEAD_BATCHES = 4  # batches whose requests are embedded in one call, ahead of their transactions (on ShareGPT turns,
# one call per 1,024 texts took 10.8 ms a text, per 256 12.8 ms: texts of similar length share more passes)


MIN_SHARE = 32  # texts a thread embeds at least when an ingest splits its embedding (fewer: one call)


def embed_workers(embedder: Embedder) -> int:
    """How many threads an ingest embeds on by default: the cores this process may use over the threads each of the
    embedder's calls takes (its `threads`: an embedder that states it runs each call on so many, and may be called
    from several threads at once, as the ONNX one does); 1 for any other embedder."""
    threads = getattr(embedder, "threads", None)
    if not isinstance(threads, int) or threads < 1:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // threads)


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


class Ingestor:
    """Writes interactions and the experiences they teach. `lock` is the memory's: a batch changes a tenant's
    index while no other thread of the process searches or changes it."""

    def __init__(self, *, store: Store, indexes: TenantIndexes, config: MemoryConfig, embedder: Embedder,
                 instructions: SharedInstructions, lock: threading.RLock) -> None:
        self.store, self.indexes, self.config, self.embedder = store, indexes, config, embedder
        self.instructions, self.lock = instructions, lock
        self.d = embedder.dim
        self.workers = config.embed_workers or embed_workers(embedder)

    def ingest(self, records: Iterable[Interaction | dict | Rejected], *, format: str = "auto",
               tenant: str | None = None, progress: bool = False, total: int | None = None) -> IngestReport:
        """Store interactions and distil them into experiences, one transaction per batch (`VectorMemory.ingest`).

        Their requests are embedded ahead of the transactions, a window of batches in one call (texts of similar
        length share a pass), in a worker thread while the window before is written (`Lookahead`): the embedder's
        time overlaps SQL's, and no transaction holds the database while the embedder runs."""
        report = IngestReport()
        bar = tqdm(total=total, unit="rec", desc="ingest", disable=not progress)
        ahead = Lookahead(self)
        try:
            windows = self._windows(records, format, tenant, report, bar)
            first = next(windows, None)
            second = next(windows, None) if first is not None else None
            if first is None or second is None:  # one window at most: nothing to overlap, no thread
                if first is not None:
                    self._write(first, ahead.embed(first), report)
                return report
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="logmem-embed") as worker:
                pending = (first, worker.submit(ahead.embed, first))
                for window in itertools.chain([second], windows):
                    following = (window, worker.submit(ahead.embed, window))
                    self._write(pending[0], pending[1].result(), report)
                    pending = following
                self._write(pending[0], pending[1].result(), report)
        finally:
            bar.close()
            with self.lock:
                self.indexes.checkpoint()
        return report

    def _windows(self, records: Iterable[Interaction | dict | Rejected], format: str, tenant: str | None,
                 report: IngestReport, bar: Any) -> Iterator[list[list[Interaction]]]:
        """The parsed records in batches of `batch_size`, grouped in windows of AHEAD_BATCHES batches (the first
        window half as many: the embedding no writing overlaps is shorter); rejected records counted."""
        size = max(1, AHEAD_BATCHES // 2)
        window: list[list[Interaction]] = []
        batch: list[Interaction] = []
        for rec in records:
            report.read += 1
            bar.update(1)
            item = rec if isinstance(rec, Rejected) else self.parse(rec, format, tenant)
            if isinstance(item, Rejected):
                report.rejected += 1
                report.errors.append(item.error.describe())
                continue
            batch.append(item)
            if len(batch) >= self.config.batch_size:
                window.append(batch)
                batch = []
                if len(window) >= size:
                    yield window
                    window, size = [], AHEAD_BATCHES
        if batch:
            window.append(batch)
        if window:
            yield window

    def _write(self, window: list[list[Interaction]], ahead: dict[str, np.ndarray], report: IngestReport) -> None:
        for batch in window:
            self._ingest_batch(batch, report, ahead)

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

    def parse(self, rec: Interaction | dict, format: str, tenant: str | None) -> Interaction | Rejected:
        """`rec` read as an interaction, or what was wrong with it."""
        try:
            return parse_record(rec, format=format, tenant=tenant)
        except LogFormatError as exc:
            return Rejected(exc, json.dumps(rec, default=str) if isinstance(rec, dict) else repr(rec))

    def _ingest_batch(self, batch: list[Interaction], report: IngestReport,
                      ahead: dict[str, np.ndarray] | None = None) -> None:
        with self.lock:
            for tenant, items in by_tenant(batch).items():
                part = self.store.retry_on_conflict(functools.partial(self._ingest_attempt, tenant, items, ahead))
                for name in ("stored", "skipped", "experiences", "merged", "conflicts", "filtered"):
                    setattr(report, name, getattr(report, name) + getattr(part, name))

    def _ingest_attempt(self, tenant: str, items: list[Interaction],
                        ahead: dict[str, np.ndarray] | None) -> IngestReport:
        """`_ingest_tenant` in one transaction, counted apart: an attempt rolled back counts nothing."""
        part = IngestReport()
        try:
            self._ingest_tenant(tenant, items, part, ahead)
        except BaseException:
            self.instructions.drop(tenant)  # may hold instructions of the rolled-back transaction
            raise
        return part

    def _ingest_tenant(self, tenant: str, items: list[Interaction], report: IngestReport,
                       ahead: dict[str, np.ndarray] | None = None) -> None:
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
            self.instructions.learn(tx, tenant, [c for cs in cands.values() for c in cs])
            vectors = self.embed_new(tx, tenant, [c for cs in cands.values() for c in cs], ahead)
            statuses: dict[int, str] = {}
            for ext_id, it in fresh.items():
                pk = self.store.add_interaction(tx, record=it.to_json(), status="filtered")
                report.stored += 1
                self.learn(tx, tenant, index, pk, it, cands[ext_id], vectors, report, statuses=statuses)
            self.store.set_statuses(tx, {pk: s for pk, s in statuses.items() if s != "filtered"})
            self.indexes.stage(tx, index)
            generation = self.store.bump_generation(tx, tenant=tenant, added=index.added()[0])
        self.indexes.committed(index, generation)

    def learn(self, tx: Tx, tenant: str, index: Pending, pk: int, it: Interaction, cands: Sequence[Candidate],
              vectors: dict[str, np.ndarray], report: IngestReport, status: str | None = None,
              statuses: dict[int, str] | None = None) -> str:
        """Place one stored interaction's candidates (new experience, merge or conflict) and set its status
        (the better of `status`, what it had, and what these candidates made of it); with `statuses`, the status
        goes there for the caller to write with others."""
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
        if statuses is None:
            self.store.set_status(tx, interaction_id=pk, status=final)
        else:
            statuses[pk] = final
        return final

    def embed_new(self, tx: Tx, tenant: str, cands: Sequence[Candidate],
                  ahead: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Vectors for the distinct request bodies of candidates that are not exact duplicates: from `ahead` (bodies
        embedded before the transaction) where it has them, the rest embedded now."""
        stored = self.store.stored_hashes(tx, tenant=tenant, hashes=[c.content_hash for c in cands])
        texts = sorted({self.instructions.split(tenant, c.trigger)[1] for c in cands if c.content_hash not in stored})
        ahead = ahead or {}
        vectors = self.encode([t for t in texts if t not in ahead])
        vectors.update((t, ahead[t]) for t in texts if t in ahead)
        return vectors

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """`texts` embedded, by text: in one call, or split among `embed_workers` threads (each share spans every
        length, so that each pads as little as the whole would)."""
        if not texts:
            return {}
        workers = min(self.workers, len(texts) // MIN_SHARE)
        if workers < 2:
            return dict(zip(texts, self._embedded(texts)))
        by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        shares = [by_length[w::workers] for w in range(workers)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="logmem-embed-share") as pool:
            parts = list(pool.map(lambda share: self._embedded([texts[i] for i in share]), shares))
        xb = np.empty((len(texts), self.d), dtype=np.float32)
        for share, part in zip(shares, parts):
            xb[share] = part
        return dict(zip(texts, xb))

    def _embedded(self, texts: list[str]) -> np.ndarray:
        """The embedder's vectors of `texts` (one call), checked for their shape."""
        xb = self.embedder.encode(texts)
        if xb.shape != (len(texts), self.d):
            raise DimensionMismatchError(f"embedder returned shape {xb.shape}, expected ({len(texts)}, {self.d})")
        return np.asarray(xb, dtype=np.float32)

    def _place(self, tx: Tx, tenant: str, index: Pending, c: Candidate, vectors: dict[str, np.ndarray],
               interaction_id: int) -> str:
        """Store one candidate as a new experience, a merge, or a conflict; return which."""
        same = self.store.experience_by_hash(tx, tenant=tenant, content_hash=c.content_hash)
        if same is not None:
            self.store.merge_into(tx, experience_id=same, interaction_id=interaction_id, timestamp=c.timestamp,
                                  success=c.success)
            return "exact"
        instruction, body = self.instructions.split(tenant, c.trigger)
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


class Lookahead:
    """The request bodies of batches not yet written, embedded in one call before their transactions (in
    `Ingestor.ingest`'s worker thread, while the window before is written). Each body is predicted as its
    batch's transaction will split it: interactions the store or this ingest already took are skipped, so are
    candidates stored word for word, and leading paragraphs are counted batch by batch as the transactions will
    count them (`SharedInstructions.learn`), so that an instruction that becomes shared within the ingest is
    stripped from the same batch on. A body predicted wrong (another process wrote in between) is embedded in its
    transaction, as every body was before: the prediction saves time and decides nothing."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor
        self.taken: set[tuple[str, str]] = set()  # (tenant, interaction id) this ingest has seen
        self.counts: dict[tuple[str, str], int] = {}  # (tenant, leading paragraph's hash) -> count once written
        self.hashes: set[tuple[str, str]] = set()  # (tenant, content hash) of candidates an earlier window holds

    def embed(self, window: list[list[Interaction]]) -> dict[str, np.ndarray]:
        ing, now = self.ingestor, time.time()
        bodies: set[str] = set()
        window_hashes: set[tuple[str, str]] = set()
        for batch in window:
            for tenant, items in by_tenant(batch).items():
                cands = [c for it in self._fresh(tenant, items) for c in distill(it, ing.config, now=now)]
                if not cands:
                    continue
                shared = self._shared(tenant, cands)
                stored = ing.store.stored_hashes(tenant=tenant, hashes=[c.content_hash for c in cands])
                bodies.update(split_instruction(c.trigger, shared)[1] for c in cands
                              if c.content_hash not in stored and (tenant, c.content_hash) not in self.hashes)
                window_hashes.update((tenant, c.content_hash) for c in cands)
        self.hashes |= window_hashes  # a later window's word-for-word copy finds it stored by then
        return ing.encode(sorted(bodies))

    def _fresh(self, tenant: str, items: list[Interaction]) -> list[Interaction]:
        known = self.ingestor.store.known_interactions(None, tenant=tenant, ext_ids=[it.id for it in items])
        fresh = []
        for it in items:
            if it.id not in known and (tenant, it.id) not in self.taken:
                self.taken.add((tenant, it.id))
                fresh.append(it)
        return fresh

    def _shared(self, tenant: str, cands: list[Candidate]) -> set[str]:
        """The shared instructions the batch's transaction will split `cands` with (after counting them)."""
        ing = self.ingestor
        known = ing.instructions.known(tenant)
        if not ing.config.strip_shared_instructions:
            return known
        heads = count_heads(cands)
        unread = [h for h in heads if (tenant, h) not in self.counts]
        if unread:
            stored = ing.store.instruction_counts(tenant=tenant, hashes=unread)
            self.counts.update(((tenant, h), stored.get(h, 0)) for h in unread)
        for h, (_, n) in heads.items():
            self.counts[tenant, h] += n
        return known | {head for h, (head, _) in heads.items()
                        if self.counts[tenant, h] >= ing.config.shared_min_count}


def by_tenant(batch: list[Interaction]) -> dict[str, list[Interaction]]:
    grouped: dict[str, list[Interaction]] = {}
    for it in batch:
        grouped.setdefault(it.tenant, []).append(it)
    return grouped


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


@dataclass(frozen=True)
class Imported:
    """One experience to import as it is (no log, no distillation): what a bulk import, a benchmark's synthetic
    memory or another installation's export holds."""

    trigger: str
    response: str
    vector: np.ndarray  # its trigger's embedding, float32 (d,)
    user: str | None = None
    instruction: str | None = None  # the shared instruction its trigger was stripped of
    lesson: str | None = None
    rejected: str | None = None
    alpha: float = 2.0  # its utility's Beta posterior (a liked answer's)
    beta: float = 1.0
    created_at: float | None = None  # default: now


def import_experiences(store: Store, items: Sequence[Imported], *, tenant: str, batch: int = 5_000,
                       progress: bool = False, instructions: dict[str, int] | None = None) -> list[int]:
    """Write `items` as `tenant`'s experiences in bulk, one transaction and one index generation per `batch`, each
    batch sourced to one interaction row: the index follows at the next search, as another process's would. Exact
    duplicates are not merged (nothing is distilled). `instructions`: shared instructions (text -> how many requests
    opened with it) added to the tenant's tally, as ingesting those requests would count them. Returns their ids, in
    order."""
    ids: list[int] = []
    now = time.time()
    if instructions:
        with store.transaction() as tx:
            store.count_instructions(tx, tenant=tenant, counts={text_hash(t): (t, n) for t, n in instructions.items()})
    for start in tqdm(range(0, len(items), batch), desc=f"import {tenant}", unit="batch", disable=not progress):
        chunk = items[start:start + batch]
        rows = [{"user": e.user, "content_hash": content_hash(e.trigger, e.response), "instruction": e.instruction,
                 "trigger": e.trigger, "response": e.response, "lesson": e.lesson, "rejected": e.rejected,
                 "vector": np.asarray(e.vector, dtype=np.float32).tobytes(), "alpha": e.alpha, "beta": e.beta,
                 "support": 1, "uses": 0, "created_at": e.created_at if e.created_at is not None else now,
                 "last_seen_at": e.created_at if e.created_at is not None else now} for e in chunk]
        with store.transaction() as tx:
            source = store.add_interaction(tx, record={"id": f"import-{now:.6f}-{start}", "tenant": tenant,
                                                       "messages": [], "feedback": []}, status="experience")
            added = store.add_experiences(tx, tenant=tenant, rows=rows, source=source)
            store.bump_generation(tx, tenant=tenant, added=added)
        ids += added
    return ids
