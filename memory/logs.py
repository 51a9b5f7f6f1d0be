"""The log schema (DESIGN.md) and its importers: native JSONL, OpenAI-style chat logs, MemoryBench items."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import LogFormatError
from .text import check_identifier, clean_json, clean_text
from .vocabulary import FEEDBACK_KINDS, LOG_FORMATS, RATING_MAX, RATING_MIN

logger = logging.getLogger(__name__)
ROLES = ("system", "user", "assistant")
MAX_FEEDBACK_TEXT = 20_000  # characters of a feedback's text (a correction's right answer)


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Feedback:
    """A judgement of the assistant message at index `turn` of `messages`."""

    turn: int
    kind: str
    value: float | None = None
    text: str | None = None


@dataclass(frozen=True)
class Interaction:
    """One logged conversation with the feedback it received."""

    id: str
    messages: tuple[Message, ...]
    feedback: tuple[Feedback, ...] = ()
    tenant: str = "default"
    user: str | None = None
    session: str | None = None
    timestamp: float | None = None  # epoch seconds
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The native-schema record of this interaction (what `parse_record` reads back)."""
        return {
            "id": self.id, "tenant": self.tenant, "user": self.user, "session": self.session,
            "timestamp": self.timestamp,
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
            "feedback": [{k: v for k, v in vars(f).items() if v is not None} for f in self.feedback],
            "metadata": self.metadata,
        }


def content_id(obj: dict[str, Any]) -> str:
    """A stable id made from a hash of the record's content (used when a record has no `id`)."""
    # surrogatepass: a lone surrogate (refused or cleaned later) must not fail the hash; other text hashes as UTF-8
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")
    return hashlib.sha256(blob).hexdigest()[:24]


def _parse_timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise LogFormatError(f"expected ISO-8601 text or epoch seconds, got {value!r}", field="timestamp")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise LogFormatError(f"expected a finite number, got {value!r}", field="timestamp")
        return float(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise LogFormatError(f"not an ISO-8601 date: {value!r}", field="timestamp") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    raise LogFormatError(f"expected ISO-8601 text or epoch seconds, got {type(value).__name__}",
                         field="timestamp")


def _parse_messages(raw: Any, key: str) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise LogFormatError("expected a non-empty list of messages", field=key)
    out = []
    for i, m in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise LogFormatError(f"expected an object, got {type(m).__name__}", field=where)
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise LogFormatError(f"role must be one of {', '.join(ROLES)}, got {role!r}", field=f"{where}.role")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(t for p in content if isinstance(p, dict) and isinstance(t := p.get("text"), str))
        if not isinstance(content, str):
            raise LogFormatError(f"expected text, got {type(content).__name__}", field=f"{where}.content")
        out.append(Message(role, clean_text(content)))
    if not any(m.role == "assistant" for m in out):
        raise LogFormatError("no assistant message: nothing to learn from", field=key)
    return tuple(out)


def _parse_feedback(raw: Any, messages: tuple[Message, ...]) -> tuple[Feedback, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise LogFormatError(f"expected a list, got {type(raw).__name__}", field="feedback")
    out = []
    for i, f in enumerate(raw):
        where = f"feedback[{i}]"
        if not isinstance(f, dict):
            raise LogFormatError(f"expected an object, got {type(f).__name__}", field=where)
        try:
            kind = check_feedback_kind(f.get("kind"))
            turn = _parse_turn(f.get("turn"), messages)
            value = check_feedback_value(f.get("value"))
            check_feedback_needs(kind, value)
            text = check_feedback_text(f.get("text"))
        except LogFormatError as exc:
            raise LogFormatError(exc.reason, field=f"{where}.{exc.field}") from None
        out.append(Feedback(turn, kind, value, text))
    return tuple(out)


def _parse_turn(turn: Any, messages: tuple[Message, ...]) -> int:
    if isinstance(turn, bool) or not isinstance(turn, int):
        raise LogFormatError(f"expected an integer message index, got {turn!r}", field="turn")
    if not 0 <= turn < len(messages) or messages[turn].role != "assistant":
        raise LogFormatError(f"turn {turn} is not the index of an assistant message", field="turn")
    return turn


# One feedback event's fields, checked by these for every way in: the log parser and the feedback route's schema.
def check_feedback_kind(kind: Any) -> str:
    """`kind` when it is one of `FEEDBACK_KINDS`. Raises LogFormatError (field 'kind')."""
    if kind not in FEEDBACK_KINDS:
        raise LogFormatError(f"kind must be one of {', '.join(FEEDBACK_KINDS)}, got {kind!r}", field="kind")
    return str(kind)


def check_feedback_value(value: Any) -> float | None:
    """None, or `value` as a float when it is a finite number from `RATING_MIN` to `RATING_MAX` (a rating's scale,
    whatever the kind). Raises LogFormatError (field 'value')."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LogFormatError(f"expected a number, got {value!r}", field="value")
    if not RATING_MIN <= value <= RATING_MAX:  # NaN fails this too
        raise LogFormatError(f"expected a finite number from {RATING_MIN:g} to {RATING_MAX:g}, got {value!r}",
                             field="value")
    return float(value)


def check_feedback_needs(kind: str, value: float | None) -> None:
    """A rating needs its value. Raises LogFormatError (field 'value').

    A correction's text is not required here: a logged correction may be told by the next user turn; a
    correction of a served answer has no next turn, so `VectorMemory.feedback` requires its text."""
    if kind == "rating" and value is None:
        raise LogFormatError(f"a rating needs a numeric value ({RATING_MIN:g}-{RATING_MAX:g})", field="value")


def check_feedback_text(text: Any) -> str | None:
    """None, or `text` cleaned as free text (`clean_text`), at most `MAX_FEEDBACK_TEXT` characters.
    Raises LogFormatError (field 'text')."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise LogFormatError(f"expected text, got {type(text).__name__}", field="text")
    if len(text) > MAX_FEEDBACK_TEXT:
        raise LogFormatError(f"longer than {MAX_FEEDBACK_TEXT} characters ({len(text)})", field="text")
    return clean_text(text)


MAX_KEY_LENGTH = 200  # ids, tenants, users and sessions are indexed keys in SQL


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise LogFormatError(f"expected text, got {type(v).__name__}", field=key)
    return _key(str(v), key)


def _key(value: str, field: str) -> str:
    """An identifier (id, tenant, user, session): `check_identifier`, and short enough to index."""
    if len(value) > MAX_KEY_LENGTH:
        raise LogFormatError(f"longer than {MAX_KEY_LENGTH} characters ({len(value)})", field=field)
    return check_identifier(value, field=field)


def _native(obj: dict[str, Any], tenant: str | None) -> Interaction:
    messages = _parse_messages(obj.get("messages"), "messages")
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise LogFormatError(f"expected an object, got {type(metadata).__name__}", field="metadata")
    retrieved = metadata.get("retrieved")
    if retrieved is not None and (not isinstance(retrieved, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63 for i in retrieved)):
        raise LogFormatError("expected a list of experience ids (integers)", field="metadata.retrieved")
    metadata = clean_json(metadata, field="metadata")
    return Interaction(
        id=_opt_str(obj, "id") or content_id(obj),
        messages=messages,
        feedback=_parse_feedback(obj.get("feedback"), messages),
        tenant=tenant or _opt_str(obj, "tenant") or "default",
        user=_opt_str(obj, "user"),
        session=_opt_str(obj, "session"),
        timestamp=_parse_timestamp(obj.get("timestamp")),
        metadata=metadata,
    )


def _openai(obj: dict[str, Any], tenant: str | None) -> Interaction:
    """A chat-completions request (`messages`), optionally with its response (`choices`)."""
    raw = obj.get("messages") or []
    if not isinstance(raw, list):
        raise LogFormatError(f"expected a list of messages, got {type(raw).__name__}", field="messages")
    raw = list(raw)
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        raw.append(choices[0].get("message"))
    messages = _parse_messages(raw, "messages")
    ts = obj.get("created", obj.get("timestamp"))
    return Interaction(id=_opt_str(obj, "id") or content_id(obj), messages=messages,
                       tenant=tenant or _opt_str(obj, "tenant") or "default", user=_opt_str(obj, "user"),
                       timestamp=_parse_timestamp(ts),
                       metadata=clean_json({"model": obj["model"]}, field="model") if "model" in obj else {})


_MB_ACTIONS = {"like": "like", "dislike": "dislike", "copy": "copy", "regenerate": "regenerate"}


def _memorybench(obj: dict[str, Any], tenant: str | None) -> Interaction:
    """A MemoryBench item: `dialog` messages plus `implicit_feedback` per assistant round (1-based)."""
    messages = _parse_messages(obj.get("dialog"), "dialog")
    assistant_turns = [i for i, m in enumerate(messages) if m.role == "assistant"]
    raw = obj.get("implicit_feedback") or []
    if not isinstance(raw, list):
        raise LogFormatError(f"expected a list, got {type(raw).__name__}", field="implicit_feedback")
    feedback: list[Feedback] = []
    for i, f in enumerate(raw):
        where = f"implicit_feedback[{i}]"
        if not isinstance(f, dict):
            raise LogFormatError(f"expected an object, got {type(f).__name__}", field=where)
        rnd = f.get("round", i + 1)
        if isinstance(rnd, bool) or not isinstance(rnd, int) or not 1 <= rnd <= len(assistant_turns):
            raise LogFormatError(f"round {rnd!r} names no assistant message", field=f"{where}.round")
        turn = assistant_turns[rnd - 1]
        actions = f.get("implicit_actions") or []
        if not isinstance(actions, list):
            raise LogFormatError(f"expected a list, got {type(actions).__name__}", field=f"{where}.implicit_actions")
        for action in actions:
            if isinstance(action, str) and action in _MB_ACTIONS:
                feedback.append(Feedback(turn, _MB_ACTIONS[action]))
        score = f.get("satisfaction_score")
        if isinstance(score, (int, float)) and not isinstance(score, bool):
            if not 0.0 <= score <= 10.0:  # NaN fails this too
                raise LogFormatError(f"expected a finite number from 0 to 10, got {score!r}",
                                     field=f"{where}.satisfaction_score")
            # MemoryBench scores satisfaction 0-10; the native rating scale is RATING_MIN-RATING_MAX
            rating = RATING_MIN + (RATING_MAX - RATING_MIN) * float(score) / 10.0
            feedback.append(Feedback(turn, "rating", rating))
    item_id = obj.get("test_idx", obj.get("id"))
    return Interaction(
        id=_key(f"{obj.get('dataset_name', 'memorybench')}-{item_id}", "id") if item_id is not None
        else content_id(obj),
        messages=messages, feedback=tuple(feedback),
        tenant=tenant or _opt_str(obj, "tenant") or "default", user=_opt_str(obj, "user"),
        metadata=clean_json({"dataset_name": obj["dataset_name"]}, field="dataset_name")
        if "dataset_name" in obj else {},
    )


_READERS = {"native": _native, "openai": _openai, "memorybench": _memorybench}


def detect_format(obj: dict[str, Any]) -> str:
    """Which importer reads `obj`: MemoryBench has `dialog`, OpenAI logs `choices` and no `feedback`."""
    if "dialog" in obj:
        return "memorybench"
    if "choices" in obj and "feedback" not in obj:
        return "openai"
    return "native"


def stored_record(record: dict[str, Any]) -> Interaction | None:
    """A record read back from SQL, parsed as a new one is; None (with a warning) where it breaks a rule of the
    boundary it was stored before (a row of an older version: a rating off the 1-5 scale, a control character in an
    id), so that one old row stops neither a consolidation job nor an inspector page."""
    try:
        return parse_record(record, format="native")
    except LogFormatError as exc:
        logger.warning("stored record %r skipped: %s", record.get("id"), exc)
        return None


def parse_record(obj: Any, *, format: str = "auto", tenant: str | None = None) -> Interaction:
    """Read one record (a dict, or an `Interaction` passed through) into an `Interaction`.

    Raises:
        LogFormatError: naming the field and the problem.
    """
    if isinstance(obj, Interaction):
        return obj
    if not isinstance(obj, dict):
        raise LogFormatError(f"expected a JSON object, got {type(obj).__name__}")
    if format not in LOG_FORMATS:
        raise LogFormatError(f"unknown format {format!r}; expected one of {', '.join(LOG_FORMATS)}")
    if tenant is not None:
        _key(tenant, "tenant")
    return _READERS[detect_format(obj) if format == "auto" else format](obj, tenant)


@dataclass(frozen=True)
class Rejected:
    """A line that could not be read, kept verbatim for repair."""

    error: LogFormatError
    raw: str


def read_jsonl(path: str | Path, *, format: str = "auto",
               tenant: str | None = None) -> Iterator[Interaction | Rejected]:
    """Yield each line of a JSONL file as an `Interaction`, or a `Rejected` naming file, line and field."""
    path = Path(path)
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Rejected(LogFormatError(f"invalid JSON: {exc.msg} at column {exc.colno}",
                                              source=str(path), line=lineno), line)
                continue
            except (ValueError, RecursionError) as exc:  # an integer over Python's digit limit; nested too deep
                reason = "nested too deep to read" if isinstance(exc, RecursionError) else str(exc)
                yield Rejected(LogFormatError(f"invalid JSON: {reason}", source=str(path), line=lineno), line)
                continue
            try:
                yield parse_record(obj, format=format, tenant=tenant)
            except LogFormatError as exc:
                yield Rejected(exc.located(source=str(path), line=lineno), line)


def write_rejected(rejected: Iterable[Rejected], path: str | Path) -> int:
    """Append rejected lines to a side file, one JSON object each: the error and the raw line."""
    n = 0
    with Path(path).open("a", encoding="utf-8") as fh:
        for r in rejected:
            fh.write(json.dumps({"source": r.error.source, "line": r.error.line, "field": r.error.field,
                                 "error": r.error.reason, "raw": r.raw.rstrip("\n")}, ensure_ascii=False) + "\n")
            n += 1
    return n
