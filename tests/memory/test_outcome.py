"""Outcome: explicit and implicit evidence per assistant turn, and the documented conflict rule."""

from __future__ import annotations

import pytest
from logmem.memory import MemoryConfig, parse_record
from logmem.memory.errors import LogFormatError
from logmem.memory.outcome import RATING_CONFIDENCE, TurnOutcome, classify_reply, explicit_signal, judge

DEFAULT = MemoryConfig()


def chat(*turns: str, feedback: list[dict] | None = None) -> list[TurnOutcome]:
    """Judge a conversation given as alternating user / assistant texts."""
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return judge(parse_record({"messages": messages, "feedback": feedback or []}))


def only(outcomes: list[TurnOutcome]) -> TurnOutcome:
    assert len(outcomes) == 1
    return outcomes[0]


@pytest.mark.parametrize(("text", "kind"), [
    ("No, that's wrong: it is 4.", "correction"),
    ("Actually the flag is -r.", "correction"),
    ("That is not right", "correction"),
    ("It should be git reset --soft", "correction"),
    ("The correct answer is 42", "correction"),
    ("this is useless", "complaint"),
    ("It doesn't work on Windows", "complaint"),
    ("Hmm, that's not what I asked", "complaint"),
    ("That's not what I asked", "correction"),  # the correction pattern is checked first
    ("Thanks!", "thanks"),
    ("Perfect, that works", "thanks"),
    ("ok thanks", "thanks"),
    ("And how do I sort it?", None),
    ("Nothing is wrong here, tell me more", None),  # "no" only counts at the start, as a word
])
def test_classify_reply(text: str, kind: str | None) -> None:
    assert classify_reply(text) == kind


@pytest.mark.parametrize(("fb", "success", "confidence"), [
    ({"kind": "like"}, 1.0, 0.9),
    ({"kind": "copy"}, 1.0, 0.8),
    ({"kind": "dislike"}, 0.0, 0.9),
    ({"kind": "regenerate"}, 0.0, 0.7),
    ({"kind": "correction", "text": "use -r"}, 0.0, 0.9),
    ({"kind": "rating", "value": 5}, 1.0, 0.8),
    ({"kind": "rating", "value": 4}, 0.75, 0.8),
    ({"kind": "rating", "value": 1}, 0.0, 0.8),
])
def test_explicit_feedback(fb: dict, success: float, confidence: float) -> None:
    o = only(chat("q", "a", feedback=[{"turn": 1, **fb}]))

    assert (o.turn, o.success, o.confidence, o.explicit) == (1, success, confidence, True)


def test_a_rating_off_the_scale_is_refused_by_the_parser_and_clipped_by_the_signal() -> None:
    with pytest.raises(LogFormatError, match=r"field 'feedback\[0\]\.value': expected a finite number from 1 to 5"):
        chat("q", "a", feedback=[{"turn": 1, "kind": "rating", "value": 9}])
    assert explicit_signal("rating", 9) == (1.0, RATING_CONFIDENCE)


def test_explicit_correction_carries_its_text() -> None:
    o = only(chat("q", "a", feedback=[{"turn": 1, "kind": "correction", "text": "use -r"}]))

    assert o.correction == "use -r"
    assert o.confident_failure(DEFAULT.min_success, DEFAULT.min_confidence)


@pytest.mark.parametrize(("reply", "success", "confidence", "correction"), [
    ("No, it is 4.", 0.0, 0.7, "No, it is 4."),
    ("That doesn't work", 0.0, 0.6, "That doesn't work"),
    ("Thanks, that helped", 1.0, 0.6, None),
    ("Now how do I sort it?", 0.8, 0.3, None),
])
def test_implicit_evidence_from_the_next_user_turn(reply: str, success: float, confidence: float,
                                                   correction: str | None) -> None:
    first, _ = chat("q", "a", reply, "a2")

    assert (first.success, first.confidence, first.explicit, first.correction) == (success, confidence, False,
                                                                                   correction)


def test_the_last_answer_is_weak_evidence_of_success() -> None:
    o = only(chat("q", "a"))

    assert (o.success, o.confidence, o.explicit) == (0.7, 0.2, False)
    assert not o.confident_success(DEFAULT.min_success, DEFAULT.min_confidence)


def test_thanks_is_a_confident_success_moving_on_is_not() -> None:
    thanked, _ = chat("q", "a", "thanks!", "welcome")
    moved_on, _ = chat("q", "a", "what about dicts?", "a2")

    assert thanked.confident_success(DEFAULT.min_success, DEFAULT.min_confidence)
    assert not moved_on.confident_success(DEFAULT.min_success, DEFAULT.min_confidence)


def test_explicit_overrides_implicit() -> None:
    liked, _ = chat("q", "a", "No, that's wrong", "a2", feedback=[{"turn": 1, "kind": "like"}])
    disliked, _ = chat("q", "a", "thanks", "a2", feedback=[{"turn": 1, "kind": "dislike"}])

    assert (liked.success, liked.confidence, liked.explicit, liked.correction) == (1.0, 0.9, True, None)
    assert (disliked.success, disliked.confidence, disliked.explicit) == (0.0, 0.9, True)


def test_an_explicit_failure_takes_the_correction_text_from_the_next_turn() -> None:
    first, _ = chat("q", "a", "No, use -r", "a2", feedback=[{"turn": 1, "kind": "dislike"}])

    assert first.correction == "No, use -r"


@pytest.mark.parametrize(("kinds", "success"), [(["like", "dislike"], 0.0), (["dislike", "like"], 1.0),
                                                (["copy", "regenerate"], 0.0)])
def test_conflicting_explicit_signals_last_wins_at_half_confidence(kinds: list[str], success: float) -> None:
    o = only(chat("q", "a", feedback=[{"turn": 1, "kind": k} for k in kinds]))

    assert o.success == success
    assert o.confidence == pytest.approx({"like": 0.9, "dislike": 0.9, "regenerate": 0.7}[kinds[-1]] / 2)
    # filtered as noise at the default thresholds, neither a success nor a failure
    assert not o.confident_success(DEFAULT.min_success, DEFAULT.min_confidence)
    assert not o.confident_failure(DEFAULT.min_success, DEFAULT.min_confidence)


def test_agreeing_explicit_signals_keep_full_confidence() -> None:
    o = only(chat("q", "a", feedback=[{"turn": 1, "kind": "like"}, {"turn": 1, "kind": "copy"}]))

    assert (o.success, o.confidence) == (1.0, 0.8)


def test_feedback_judges_only_its_turn() -> None:
    first, second = chat("q1", "a1", "q2", "a2", feedback=[{"turn": 3, "kind": "like"}])

    assert (first.turn, first.explicit, first.success) == (1, False, 0.8)
    assert (second.turn, second.explicit, second.success) == (3, True, 1.0)


def test_system_and_user_messages_are_not_judged() -> None:
    it = parse_record({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "a"}]})

    assert [o.turn for o in judge(it)] == [2]
