"""Conditioning: retrieved experiences into the prompt, through named templates and under token budgets."""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from logmem.memory import ConfigError, Hit

from .config import GeneratorConfig

TEMPLATES = Path(__file__).parent / "templates"
# the bundled templates of messages that give a conversation back unchanged when the memory adds nothing
UNCHANGED_WHEN_EMPTY = frozenset({"exchanges", "notes"})
# the bundled templates that show an experience's request without the instruction it shares with other requests
# (`Hit.body`), so that is what its budget counts; any other (plain, a template given by path) the whole trigger
SHOWS_BODY = frozenset({"exchanges", "notes"})
Messages = list[dict[str, str]]


@lru_cache(maxsize=32)
def load_template(name: str) -> jinja2.Template:
    """A template by name (a file in model/templates/ without `.jinja`) or by path."""
    path = Path(name) if name.endswith(".jinja") else TEMPLATES / f"{name}.jinja"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TEMPLATES.glob("*.jinja")))
        raise ConfigError(f"no prompt template {name!r}; known templates: {known}, or a path to a .jinja file")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    return env.from_string(path.read_text())


def _context(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    return [{"trigger": h.trigger, "body": h.body, "response": h.response, "lesson": h.lesson,
             "score": h.score} for h in hits]


@dataclass(frozen=True)
class Conditioning:
    """What goes into the prompt: the experiences (in prompt order) and the lessons that fit the budgets."""

    experiences: list[Hit]
    lessons: list[str]
    memory_tokens: int  # tokens spent on experiences and lessons (before chat formatting)
    answers: list[dict[str, Any]] = field(default_factory=list)  # where answers repeat (`answer_note`): each
    # distinct answer of the experiences with its count, most given first (the template's note)
    facts: list[str] = field(default_factory=list)  # under focus with `fact_note`: the kept experiences' answers,
    # best first, for the template's note (a small model reading them there copies them more often than from an
    # exchange alone: benchmarks/results/freetext.md)
    fact_place: str = "question"  # where the template states `facts` (`GeneratorConfig.fact_place`): after the
    # question in its own turn (where there is one), or in the system note

    @property
    def adds_text(self) -> bool:
        """Whether a template has anything of the memory's to put in the conversation."""
        return bool(self.experiences or self.lessons or self.answers or self.facts)


def select(hits: Sequence[Hit], tokenizer: Any, config: GeneratorConfig, *, focus: bool = False) -> Conditioning:
    """Keep the best-scored hits whose exchanges, as the template shows them (`SHOWS_BODY`), fit
    `memory_token_budget`, then order them best last (nearest the question), or under `order="answer"` grouped by
    answer, the best-supported answer's group last; lessons fit `lesson_token_budget`. With `answer_note`, where
    answers repeat, each answer's count for the template.

    `focus` (free generation on a tenant whose answers do not repeat): hits whose score trails the best by more than
    `focus_margin` stay out (`focused`), so a hit that dominates conditions the answer alone; with `fact_note` the
    kept answers are also stated in a note (`facts`, after the question or in the system note: `fact_place`), and a
    lesson that only repeats one of them is left out."""
    chosen: list[Hit] = []
    used = 0
    ranked = [h for h in sorted(hits, key=lambda h: h.score, reverse=True) if h.score >= config.min_score]
    if focus:
        ranked = focused(ranked, config.focus_margin)
    # what the template shows of each exchange, and the lessons, counted in one call
    shown = [text for h in ranked for text in (h.body if config.template in SHOWS_BODY else h.trigger, h.response)]
    noted = list(dict.fromkeys(h.lesson for h in ranked if h.lesson))
    sizes = _counts(tokenizer, shown + noted)
    lesson_sizes = dict(zip(noted, sizes[len(shown):]))
    for i, h in enumerate(ranked):
        n = sizes[2 * i] + sizes[2 * i + 1]
        if used + n > config.memory_token_budget:
            continue
        chosen.append(h)
        used += n
    lessons: list[str] = []
    spent = 0
    for h in chosen:
        if h.lesson and h.lesson not in lessons:
            n = lesson_sizes[h.lesson]
            if spent + n <= config.lesson_token_budget:
                lessons.append(h.lesson)
                spent += n
    ordered = list(reversed(chosen))
    counts: dict[str, int] = {}
    for h in ordered:
        counts[h.response.strip()] = counts.get(h.response.strip(), 0) + 1
    if config.order == "answer":  # the best-supported answer's exchanges nearest the question
        support: dict[str, float] = {}
        for h in ordered:
            support[h.response.strip()] = support.get(h.response.strip(), 0.0) + max(h.score, 1e-6)
        rank = {id(h): i for i, h in enumerate(ordered)}
        ordered.sort(key=lambda h: (support[h.response.strip()], rank[id(h)]))
    answers = []
    if config.answer_note and len(counts) < len(ordered):  # some answer repeats: say how often each was given
        answers = [{"answer": a, "count": n} for a, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    facts: list[str] = []
    if focus and config.fact_note:
        facts = list(dict.fromkeys(h.response.strip() for h in chosen))
        lessons = [lesson for lesson in lessons if lesson.strip() not in facts]
    return Conditioning(ordered, lessons, used + spent, answers, facts, config.fact_place)


def focused(ranked: Sequence[Hit], margin: float | None) -> list[Hit]:
    """The hits of `ranked` (best first) within `margin` of the best one's score (None: all). Where each answer is a
    fact of its own, an exchange that scores well below the best is another fact, which a small model copies as
    readily as the right one (benchmarks/results/freetext.md); one that scores close may still be the right one."""
    if margin is None or not ranked:
        return list(ranked)
    return [h for h in ranked if ranked[0].score - h.score <= margin]


def render_messages(messages: Messages, conditioning: Conditioning, template: str) -> Messages:
    """The caller's conversation with the memory added by `template`. With nothing to add (no experience, lesson or
    note), a bundled template gives the conversation back as it is (`tests/model/test_generator.py` checks each one
    on every shape of conversation), so it is not rendered: ~0.06 ms a request of a tenant without memory, ~3x that
    under a server's load. A template given by path is always rendered (it may add its own text)."""
    if template in UNCHANGED_WHEN_EMPTY and not conditioning.adds_text:
        return [dict(m) for m in messages]
    out = load_template(template).render(messages=messages, experiences=_context(conditioning.experiences),
                                         lessons=conditioning.lessons, answers=conditioning.answers,
                                         facts=conditioning.facts, fact_place=conditioning.fact_place)
    rendered = json.loads(out)
    if not isinstance(rendered, list):
        raise ConfigError(f"template {template!r} must render a JSON list of messages")
    return rendered


def render_plain(conditioning: Conditioning) -> str:
    """Experiences as a plain-text preamble, for prompts without a chat template."""
    return load_template("plain").render(experiences=_context(conditioning.experiences))


_COUNTED: weakref.WeakKeyDictionary[Any, tuple[dict[str, int], Any]] = weakref.WeakKeyDictionary()
_COUNTED_LOCK = threading.Lock()
COUNTED_TEXTS = 16_384  # token counts kept per tokenizer (then they are forgotten and counted again)


def forget_token_counts(tokenizer: Any) -> None:
    """Drop the token counts `select` keeps for `tokenizer` (a benchmark measures the first sight of its hits); the
    tokenizer's copy that counts them is kept (made again, it would cost ~0.1 s)."""
    with _COUNTED_LOCK:
        if tokenizer in _COUNTED:
            _COUNTED[tokenizer][0].clear()


def _counts(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """How many tokens each of `texts` is. Cached per tokenizer: the same experiences come back request after
    request. The texts not cached are tokenized in one call (one call's overhead, not one per text: a request's
    exchanges took ~1 ms to count one by one at 100k experiences, where most of them are new)."""
    with _COUNTED_LOCK:
        if tokenizer not in _COUNTED:
            _COUNTED[tokenizer] = ({}, _counter(tokenizer))
        known, count = _COUNTED[tokenizer]
        found = {t: known[t] for t in texts if t in known}
    missing = [t for t in dict.fromkeys(texts) if t not in found]
    if missing:
        found.update(zip(missing, count(missing)))
        with _COUNTED_LOCK:
            if len(known) + len(missing) > COUNTED_TEXTS:
                known.clear()
            known.update((t, found[t]) for t in missing)
    return [found[t] for t in texts]


def _counter(tokenizer: Any) -> Any:
    """A function from texts to their token counts (no special tokens added). For a fast tokenizer, a private copy
    of its Rust tokenizer, without truncation or padding, read by `encode_batch_fast` (no offsets): 16 first-seen
    NFCats texts in 0.65 ms p50 against 0.98 through the tokenizer's call. A copy, because a call through the
    tokenizer leaves its own truncation and padding set on the Rust one, which counts would then follow."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    own = type(backend).from_str(backend.to_str())
    own.no_truncation()
    own.no_padding()
    return lambda texts: [len(e.ids) for e in own.encode_batch_fast(texts, add_special_tokens=False)]


@dataclass(frozen=True)
class ChatMarkers:
    """How the tokenizer's chat template opens a user turn and what the rendering of exchanges looks
    like on its own, found by rendering probe conversations."""

    user_open: str
    user_close: str

    @classmethod
    def probe(cls, tokenizer: Any) -> ChatMarkers | None:
        if not getattr(tokenizer, "chat_template", None):
            return None
        try:
            base = tokenizer.apply_chat_template([{"role": "system", "content": "\x01"}], tokenize=False)
            turn = tokenizer.apply_chat_template([{"role": "system", "content": "\x01"},
                                                  {"role": "user", "content": "\x02"}], tokenize=False)
        except Exception:  # a template that cannot render a bare system turn: use the plain preamble
            return None
        if not turn.startswith(base) or "\x02" not in turn:
            return None
        open_, close = turn[len(base):].split("\x02", 1)
        return cls(open_, close) if open_ else None

    def exchanges(self, tokenizer: Any, messages: Messages) -> str:
        """Chat-formatted text of `messages` (no system turn), to splice into a formatted prompt."""
        base = tokenizer.apply_chat_template([{"role": "system", "content": "\x01"}], tokenize=False)
        full = tokenizer.apply_chat_template([{"role": "system", "content": "\x01"}, *messages], tokenize=False)
        return full[len(base):] if full.startswith(base) else ""

    def last_user(self, prompt: str) -> tuple[int, str] | None:
        """Where the last user turn of a formatted prompt starts, and its text."""
        start = prompt.rfind(self.user_open)
        if start < 0:
            return None
        body = prompt[start + len(self.user_open):]
        end = body.find(self.user_close) if self.user_close.strip() else -1
        return start, (body[:end] if end >= 0 else body)


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` under the tokenizer's chat template, ready for the assistant's turn."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
