"""Served answers: logged when given, judged later by explicit feedback or by the next turn of the conversation
(a follow-up), each judgement crediting the experiences that conditioned the answer and placing what it teaches;
and, for consolidation, the other requests that used an experience and went well."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .canaries import Canaries
from .config import MemoryConfig
from .distill import agree, distill, normalize, text_hash, thread_hash
from .indexes import TenantIndexes
from .ingest import Ingestor, IngestReport
from .instructions import SharedInstructions
from .logs import parse_record, stored_record
from .outcome import explicit_signal, judge
from .search import Hit
from .store import AnswerData, ExperienceData, Store, Tx
from .store.canaries import add_outcome

Judgement = Callable[[Tx, AnswerData, dict[str, Any]], dict[str, Any] | None]


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
    canary: int | None = None  # the canary whose arm the outcome counted for (the answer was served under one)

    def to_json(self) -> dict[str, object]:
        return dict(vars(self))


class Answers:
    """Logs and judges a memory's served answers. `lock` is the memory's (a judgement changes a tenant's index)."""

    def __init__(self, *, store: Store, indexes: TenantIndexes, config: MemoryConfig, ingestor: Ingestor,
                 instructions: SharedInstructions, lock: threading.RLock, canaries: Canaries) -> None:
        self.store, self.indexes, self.config, self.ingestor = store, indexes, config, ingestor
        self.instructions, self.lock, self.canaries = instructions, lock, canaries

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

        return self._decided(self.store.retry_on_conflict(
            lambda: self._rejudge(interaction_id, tenant, judge_it, result)), tenant)

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

        return self._decided(self.store.retry_on_conflict(lambda: self._rejudge(found, tenant, judge_it, result)),
                             tenant)

    def _decided(self, result: FeedbackResult, tenant: str) -> FeedbackResult:
        """After an outcome counted for a canary's arm: what the canary's outcomes decide now, applied."""
        if result.canary is not None:
            self.canaries.decide(tenant)
        return result

    def _rejudge(self, interaction_id: str, tenant: str, change: Judgement, result: FeedbackResult) -> FeedbackResult:
        """In one transaction: lock the served answer, let `change` update its record (and return the feedback
        row to add), then place the experiences the changed record teaches that it did not teach before."""
        with self.lock:
            try:
                return self._rejudge_once(interaction_id, tenant, change, result)
            except BaseException:
                self.instructions.drop(tenant)  # may hold instructions of the rolled-back transaction
                raise

    def _rejudge_once(self, interaction_id: str, tenant: str, change: Judgement,
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
            arm = answer.served.get("canary")
            if arm is not None:  # served under a canary: the outcome counts for the arm that answered, once a rating
                add_outcome(tx, canary_id=int(arm["id"]), conversation=str(arm["conversation"]), arm=str(arm["arm"]),
                            outcome=result.success)
                result.canary = int(arm["id"])
            now = time.time()
            taught = {c.content_hash for c in distill(parse_record(before, format="native"), self.config, now=now)
                      } if answer.status != "answered" else set()
            cands = [c for c in distill(parse_record(record, format="native"), self.config, now=now)
                     if c.content_hash not in taught]
            self.store.update_record(tx, interaction_pk=answer.pk, record=record, feedback=feedback_row)
            self.instructions.learn(tx, tenant, cands)
            vectors = self.ingestor.embed_new(tx, tenant, cands)
            it = parse_record(record, format="native")
            result.status = self.ingestor.learn(tx, tenant, index, answer.pk, it if answer.status == "answered" else
                                                replace(it, metadata={}), cands, vectors, report,
                                                status=answer.status)
            self.indexes.stage(tx, index)
            generation = (self.store.bump_generation(tx, tenant=tenant, added=index.added()[0]) if cands
                          else index.generation)
        if cands:
            self.indexes.committed(index, generation)
            self.indexes.checkpoint()
        result.experiences, result.merged, result.conflicts = report.experiences, report.merged, report.conflicts
        return result

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
                interaction = stored_record(record)
                for c in distill(interaction, loose) if interaction is not None else []:
                    if normalize(c.trigger) not in seen and agree(c.response, e.response, self.config.agree_threshold):
                        seen.add(normalize(c.trigger))
                        found.setdefault(e.id, []).append(c.trigger)
        return found
