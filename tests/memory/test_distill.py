"""Distillation: which turns become experience candidates, and how a candidate meets its neighbours."""

from __future__ import annotations

import pytest
from logmem.memory import MemoryConfig, parse_record
from logmem.memory.distill import (
    Candidate,
    Neighbour,
    agree,
    distill,
    leading_paragraph,
    normalize,
    plan_merge,
    split_instruction,
)

CONFIG = MemoryConfig()


def conversation(*turns: str, feedback: list[dict] | None = None, **extra: object) -> dict:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return {"messages": messages, "feedback": feedback or [], **extra}


def candidates(obj: dict, now: float = 0.0) -> list[Candidate]:
    return distill(parse_record(obj), CONFIG, now=now)


def test_a_liked_answer_becomes_one_candidate() -> None:
    obj = conversation("How do I reverse a list?", "items[::-1]", feedback=[{"turn": 1, "kind": "like"}],
                       tenant="acme", user="u1", timestamp=1000)

    (c,) = candidates(obj)

    assert (c.tenant, c.user) == ("acme", "u1")
    assert (c.trigger, c.response) == ("How do I reverse a list?", "items[::-1]")
    assert (c.success, c.confidence, c.timestamp, c.lesson, c.rejected) == (1.0, 0.9, 1000.0, None, None)


def test_now_stands_in_for_a_missing_timestamp() -> None:
    (c,) = candidates(conversation("q", "a", feedback=[{"turn": 1, "kind": "like"}]), now=42.0)

    assert c.timestamp == 42.0


def test_correction_flow_teaches_a_lesson() -> None:
    obj = conversation("How do I delete a folder with its files?", "Use rmdir folder.",
                       "No, rmdir fails on a non-empty folder.", "Use rm -r folder.", "thanks!")

    (c,) = candidates(obj)

    assert c.trigger == "How do I delete a folder with its files?"  # the original request, not the correction
    assert c.response == "Use rm -r folder."
    assert c.rejected == "Use rmdir folder."
    assert c.lesson == "No, rmdir fails on a non-empty folder."


def test_explicit_correction_feedback_text_is_the_lesson() -> None:
    obj = conversation("Capital of Australia?", "Sydney.", "Are you sure?", "Canberra.",
                       feedback=[{"turn": 1, "kind": "correction", "text": "It is Canberra"},
                                 {"turn": 3, "kind": "like"}])

    (c,) = candidates(obj)

    assert (c.trigger, c.response, c.rejected, c.lesson) == ("Capital of Australia?", "Canberra.", "Sydney.",
                                                             "It is Canberra")


def test_a_correction_with_text_and_no_later_answer_teaches_that_text() -> None:
    obj = conversation("Capital of Australia?", "Sydney.",
                       feedback=[{"turn": 1, "kind": "correction", "text": "Canberra."}])

    (c,) = candidates(obj)

    assert (c.trigger, c.response, c.rejected, c.lesson) == ("Capital of Australia?", "Canberra.", "Sydney.",
                                                             "Canberra.")
    assert c.success > 0.5


def test_a_correction_without_text_teaches_nothing() -> None:
    assert candidates(conversation("Capital of Australia?", "Sydney.",
                                   feedback=[{"turn": 1, "kind": "dislike"}])) == []


def test_a_correction_chain_goes_back_to_the_first_request() -> None:
    obj = conversation("Q", "wrong one", "No, try harder", "wrong two", "That is not right either", "right",
                       feedback=[{"turn": 5, "kind": "like"}])

    (c,) = candidates(obj)

    assert (c.trigger, c.response) == ("Q", "right")
    assert (c.rejected, c.lesson) == ("wrong two", "That is not right either")


def test_a_disliked_answer_teaches_nothing() -> None:
    assert candidates(conversation("q", "a", feedback=[{"turn": 1, "kind": "dislike"}])) == []


def test_a_corrected_answer_without_an_accepted_fix_teaches_nothing() -> None:
    assert candidates(conversation("q", "bad", "No, that's wrong.", "still bad",
                                   feedback=[{"turn": 3, "kind": "dislike"}])) == []


@pytest.mark.parametrize("feedback", [[], [{"turn": 1, "kind": "like"}, {"turn": 1, "kind": "dislike"}],
                                      [{"turn": 1, "kind": "rating", "value": 3}]])
def test_unconfident_turns_teach_nothing(feedback: list[dict]) -> None:
    assert candidates(conversation("q", "a", feedback=feedback)) == []


def test_independent_requests_in_one_conversation_each_count() -> None:
    obj = conversation("q1", "a1", "q2", "a2",
                       feedback=[{"turn": 1, "kind": "like"}, {"turn": 3, "kind": "copy"}])

    got = [(c.trigger, c.response, c.rejected) for c in candidates(obj)]

    assert got == [("q1", "a1", None), ("q2", "a2", None)]


def test_content_hash_ignores_case_spacing_and_punctuation() -> None:
    a = Candidate("t", None, "How do I REVERSE a list?", "items[::-1]", 1.0, 0.9, 0.0)
    b = Candidate("t", "other", "how do i reverse   a list", "Items :: -1", 0.5, 0.5, 9.0)
    c = Candidate("t", None, "how do i reverse a list", "reversed(items)", 1.0, 0.9, 0.0)

    assert a.content_hash == b.content_hash != c.content_hash


def test_normalize_and_agree() -> None:
    assert normalize("  Hello,   World! 42 ") == "hello world 42"
    assert agree("Use rm -r folder", "use RM -r folder.", 0.6)
    assert not agree("Use rm -r folder", "Delete it in the file manager", 0.6)
    assert agree("", "...", 0.6)  # two answers with no words do not disagree


def test_split_instruction_and_leading_paragraph() -> None:
    text = "You are a SQL expert.\n\nList all tables."
    known = {"You are a SQL expert."}

    assert leading_paragraph(text) == "You are a SQL expert."
    assert leading_paragraph("one paragraph only") is None
    assert leading_paragraph("head\n\n   ") is None
    assert split_instruction(text, known) == ("You are a SQL expert.", "List all tables.")
    assert split_instruction(text, set()) == (None, text)
    assert split_instruction("You are a SQL expert.\n\n", known) == (None, "You are a SQL expert.\n\n")


CAND = Candidate("t", None, "How do I reverse a list?", "Use items[::-1] to reverse it", 1.0, 0.9, 0.0)


def neighbour(id: int, cos: float, response: str = CAND.response,
              instruction: str | None = None) -> Neighbour:
    return Neighbour(id=id, cos=cos, response=response, instruction=instruction)


def test_plan_merge_new_when_nothing_is_near() -> None:
    assert plan_merge(CAND, None, [], CONFIG) == ("new", None)
    assert plan_merge(CAND, None, [neighbour(1, 0.94)], CONFIG) == ("new", None)


def test_plan_merge_merges_an_agreeing_near_duplicate() -> None:
    assert plan_merge(CAND, None, [neighbour(1, 0.95)], CONFIG) == ("merge", 1)


def test_plan_merge_flags_a_conflicting_answer() -> None:
    assert plan_merge(CAND, None, [neighbour(1, 0.99, "Call reversed() on it")], CONFIG) == ("conflict", 1)


def test_plan_merge_picks_the_nearest_near_duplicate() -> None:
    near = [neighbour(1, 0.96, "Call reversed() on it"), neighbour(2, 0.99), neighbour(3, 0.5)]

    assert plan_merge(CAND, None, near, CONFIG) == ("merge", 2)


def test_plan_merge_only_merges_under_the_same_instruction() -> None:
    under_sql = neighbour(1, 0.999, instruction="You are a SQL expert.")

    assert plan_merge(CAND, None, [under_sql], CONFIG) == ("new", None)
    assert plan_merge(CAND, "You are a poet.", [under_sql], CONFIG) == ("new", None)
    assert plan_merge(CAND, "You are a SQL expert.", [under_sql], CONFIG) == ("merge", 1)


def test_plan_merge_follows_the_configured_thresholds() -> None:
    strict = MemoryConfig(dup_threshold=0.999, agree_threshold=1.0)

    assert plan_merge(CAND, None, [neighbour(1, 0.99)], strict) == ("new", None)
    assert plan_merge(CAND, None, [neighbour(1, 0.9995, "Use items[::-1]")], strict) == ("conflict", 1)
