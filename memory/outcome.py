"""Outcome: how well did each assistant turn go, and how sure are we?

Every signal is evidence `(success, weight)`: explicit feedback is strong, implicit signals (the next
user turn corrects, complains, thanks, or moves on) are weaker. The rule for conflicts:

1. Explicit feedback overrides implicit signals on the same turn.
2. Explicit signals that disagree (a like and a dislike on one answer) resolve to the latest one in
   the list (the user's last word), with its confidence halved, so most such turns fall under the
   confidence bar and are filtered as noise rather than learned from.
3. Implicit evidence is the next user message alone: a correction or complaint marks the answer failed,
   thanks marks it a success, a new request is weak evidence of success, the end of the log weaker still.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .logs import Feedback, Interaction

# (success, confidence) of each explicit kind; rating is scaled from its 1-5 value
EXPLICIT: dict[str, tuple[float, float]] = {
    "like": (1.0, 0.9),
    "copy": (1.0, 0.8),
    "dislike": (0.0, 0.9),
    "regenerate": (0.0, 0.7),
    "correction": (0.0, 0.9),
}
RATING_CONFIDENCE = 0.8

_CORRECTION = re.compile(
    r"^\s*(no\b|nope\b|wrong\b|incorrect\b|not quite\b|not right\b|that'?s (not|wrong|incorrect)|"
    r"that is (not|wrong|incorrect)|actually\b|you'?re wrong|it'?s not\b|it should be\b|should be\b|"
    r"the (right|correct) answer is\b)", re.IGNORECASE)
_COMPLAINT = re.compile(
    r"\b(useless|doesn'?t work|didn'?t work|not helpful|unhelpful|makes no sense|you misunderstood|"
    r"that'?s not what i (asked|meant)|try again|not what i asked)\b", re.IGNORECASE)
_THANKS = re.compile(r"^\s*(thanks?|thank you|great|perfect|awesome|exactly|correct|got it|nice|"
                     r"that works|that helped|ok(ay)?,? thanks?)\b", re.IGNORECASE)

IMPLICIT_CORRECTION = (0.0, 0.7)
IMPLICIT_COMPLAINT = (0.0, 0.6)
IMPLICIT_THANKS = (1.0, 0.6)
IMPLICIT_MOVED_ON = (0.8, 0.3)  # the user asked something else: weak evidence the answer served
IMPLICIT_LAST = (0.7, 0.2)  # the conversation ended after it: weaker still


@dataclass(frozen=True)
class TurnOutcome:
    """The judged outcome of the assistant message at `turn`."""

    turn: int
    success: float  # estimated probability the answer served the user
    confidence: float  # how much evidence stands behind `success`, in [0, 1]
    explicit: bool  # whether explicit feedback decided it
    correction: str | None = None  # text that says what was wrong (a correction), if any

    def confident_success(self, min_success: float, min_confidence: float) -> bool:
        return self.success >= min_success and self.confidence >= min_confidence

    def confident_failure(self, min_success: float, min_confidence: float) -> bool:
        return self.success <= 1.0 - min_success and self.confidence >= min_confidence


def classify_reply(text: str) -> str | None:
    """What a user's next message says of the answer before it: correction, complaint, thanks, or None."""
    if _CORRECTION.search(text):
        return "correction"
    if _COMPLAINT.search(text):
        return "complaint"
    if _THANKS.search(text):
        return "thanks"
    return None


def explicit_signal(kind: str, value: float | None = None) -> tuple[float, float]:
    """(success, confidence) of one explicit feedback event; a rating's 1-5 `value` scales to [0, 1]
    (no value counts as the middle, 3)."""
    if kind == "rating":
        clipped = min(max(value if value is not None else 3.0, 1.0), 5.0)
        return (clipped - 1.0) / 4.0, RATING_CONFIDENCE
    if kind not in EXPLICIT:
        raise ValueError(f"unknown feedback kind {kind!r}; expected rating or one of {', '.join(EXPLICIT)}")
    return EXPLICIT[kind]


def _explicit(feedback: list[Feedback]) -> tuple[float, float, str | None]:
    signals = []
    correction = None
    for f in feedback:
        signals.append(explicit_signal(f.kind, f.value))
        if f.kind == "correction" and f.text:
            correction = f.text
    success, confidence = signals[-1]
    positive = {s >= 0.5 for s, _ in signals}
    if len(positive) > 1:
        confidence *= 0.5
    return success, confidence, correction


def _implicit(interaction: Interaction, turn: int) -> tuple[float, float, str | None]:
    msgs = interaction.messages
    nxt = next((m for m in msgs[turn + 1:] if m.role == "user"), None)
    if nxt is None:
        success, confidence = IMPLICIT_LAST
        return success, confidence, None
    kind = classify_reply(nxt.content)
    if kind == "correction":
        return (*IMPLICIT_CORRECTION, nxt.content)
    if kind == "complaint":
        return (*IMPLICIT_COMPLAINT, nxt.content)
    if kind == "thanks":
        return (*IMPLICIT_THANKS, None)
    return (*IMPLICIT_MOVED_ON, None)


def judge(interaction: Interaction) -> list[TurnOutcome]:
    """Judge every assistant message of `interaction`, in order."""
    by_turn: dict[int, list[Feedback]] = {}
    for f in interaction.feedback:
        by_turn.setdefault(f.turn, []).append(f)
    out = []
    for turn, m in enumerate(interaction.messages):
        if m.role != "assistant":
            continue
        if turn in by_turn:
            success, confidence, correction = _explicit(by_turn[turn])
            implicit_correction = _implicit(interaction, turn)[2] if success < 0.5 else None
            out.append(TurnOutcome(turn, success, confidence, True, correction or implicit_correction))
        else:
            success, confidence, correction = _implicit(interaction, turn)
            out.append(TurnOutcome(turn, success, confidence, False, correction))
    return out
