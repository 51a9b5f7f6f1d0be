"""Distillation: judged interactions become experience candidates; near-duplicates merge.

Pure functions: no SQL, no index, no embedding. `VectorMemory.ingest` composes them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .config import MemoryConfig
from .logs import Interaction
from .outcome import TurnOutcome, classify_reply, explicit_signal, judge

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Candidate:
    """An experience proposed by one interaction."""

    tenant: str
    user: str | None
    trigger: str  # the user's request, whole
    response: str  # the accepted answer
    success: float
    confidence: float
    timestamp: float
    lesson: str | None = None  # what the user's correction taught
    rejected: str | None = None  # the failed answer the correction replaced

    @property
    def content_hash(self) -> str:
        return content_hash(self.trigger, self.response)


def content_hash(trigger: str, response: str) -> str:
    """What exact duplicates share: the hash of the normalised request and answer."""
    return text_hash(normalize(trigger) + "\x00" + normalize(response))


def thread_hash(messages: Sequence[dict[str, str]]) -> str:
    """What a conversation is found again by: the hash of its roles and texts, in order."""
    return text_hash(json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False))


def normalize(text: str) -> str:
    """Lowercase words joined by single spaces: the form duplicates are compared in."""
    return " ".join(_WORD.findall(text.lower()))


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def agree(a: str, b: str, threshold: float) -> bool:
    """Two answers agree when their normalised word sets overlap by Jaccard >= threshold."""
    wa, wb = set(normalize(a).split()), set(normalize(b).split())
    if not wa and not wb:
        return True
    return len(wa & wb) / len(wa | wb) >= threshold


def split_instruction(text: str, known: set[str] | frozenset[str]) -> tuple[str | None, str]:
    """(instruction, body) when `text` opens with a known shared instruction paragraph, else (None, text)."""
    head, sep, body = text.partition("\n\n")
    if sep and head.strip() in known and body.strip():
        return head.strip(), body.strip()
    return None, text


def leading_paragraph(text: str) -> str | None:
    """The first paragraph of a multi-paragraph request: what may be an instruction many requests share."""
    head, sep, body = text.partition("\n\n")
    return head.strip() if sep and head.strip() and body.strip() else None


def _request_before(interaction: Interaction, turn: int) -> int | None:
    return next((i for i in range(turn - 1, -1, -1) if interaction.messages[i].role == "user"), None)


def _origin(interaction: Interaction, outcomes: dict[int, TurnOutcome], turn: int,
            config: MemoryConfig) -> tuple[int | None, int | None, str | None]:
    """For a successful answer at `turn`: the index of the request it answers, and, if it came after
    a failed answer and the user's correction, that failed answer's index and the correction text."""
    req = _request_before(interaction, turn)
    if req is None:
        return None, None, None
    prev = next((i for i in range(req - 1, -1, -1) if interaction.messages[i].role == "assistant"), None)
    if prev is None:
        return req, None, None
    prev_out = outcomes[prev]
    said = classify_reply(interaction.messages[req].content)
    failed = prev_out.confident_failure(config.min_success, config.min_confidence)
    if said in ("correction", "complaint") or (failed and prev_out.explicit):
        origin, _, _ = _origin(interaction, outcomes, prev, config)
        if origin is not None:
            return origin, prev, prev_out.correction or interaction.messages[req].content
    return req, None, None


def distill(interaction: Interaction, config: MemoryConfig, *, now: float = 0.0) -> list[Candidate]:
    """The experiences one interaction teaches: its confident successes, corrections made into lessons.

    `now` stands in for the time of an interaction logged without a timestamp.
    """
    outcomes = {o.turn: o for o in judge(interaction)}
    ts = interaction.timestamp if interaction.timestamp is not None else now
    out = []
    for turn, o in outcomes.items():
        if not o.confident_success(config.min_success, config.min_confidence):
            continue
        req, failed, lesson = _origin(interaction, outcomes, turn, config)
        if req is None or not interaction.messages[turn].content.strip():  # an empty answer teaches nothing
            continue
        msgs = interaction.messages
        out.append(Candidate(
            tenant=interaction.tenant, user=interaction.user, trigger=msgs[req].content,
            response=msgs[turn].content, success=o.success, confidence=o.confidence, timestamp=ts,
            lesson=lesson, rejected=msgs[failed].content if failed is not None else None))
    return out + _corrected(interaction, outcomes, config, ts, taught={c.rejected for c in out if c.rejected})


def _corrected(interaction: Interaction, outcomes: dict[int, TurnOutcome], config: MemoryConfig, ts: float, *,
               taught: set[str]) -> list[Candidate]:
    """What a correction with text teaches, whichever way it arrived (a log file, a batch, the feedback route): the
    right answer to the request the corrected answer answered, that answer as `rejected` and the text as the lesson,
    with a like's weight (the route's correction is the user's right answer, liked). Not where a later answer of the
    conversation already taught the correction of that answer (its `rejected` is in `taught`)."""
    msgs, out = interaction.messages, []
    success, confidence = explicit_signal("like")
    for f in interaction.feedback:
        text = (f.text or "").strip()
        if f.kind != "correction" or not text or not 0 <= f.turn < len(msgs) or msgs[f.turn].role != "assistant":
            continue
        if msgs[f.turn].content in taught:
            continue
        req, _, _ = _origin(interaction, outcomes, f.turn, config)
        if req is None:
            continue
        out.append(Candidate(tenant=interaction.tenant, user=interaction.user, trigger=msgs[req].content,
                             response=str(f.text), success=success, confidence=confidence, timestamp=ts,
                             lesson=str(f.text), rejected=msgs[f.turn].content))
        taught.add(msgs[f.turn].content)
    return out


@dataclass(frozen=True)
class Neighbour:
    """An existing experience near a candidate's trigger."""

    id: int
    cos: float
    response: str
    instruction: str | None


def plan_merge(candidate: Candidate, instruction: str | None, neighbours: Sequence[Neighbour],
               config: MemoryConfig) -> tuple[str, int | None]:
    """Decide ("new", None), ("merge", id) or ("conflict", id) for a candidate with no exact duplicate.

    A near-duplicate is the nearest neighbour with trigger cosine >= dup_threshold under the same shared
    instruction; it merges when the answers agree, else the two answers conflict.
    """
    near = [n for n in neighbours if n.cos >= config.dup_threshold and n.instruction == instruction]
    if not near:
        return "new", None
    best = max(near, key=lambda n: n.cos)
    if agree(candidate.response, best.response, config.agree_threshold):
        return "merge", best.id
    return "conflict", best.id
