"""Served answers judged more than once: each judgement adds only what is new."""

from __future__ import annotations

from pathlib import Path

from logmem.memory import Embedder, VectorMemory

Q, A = "How do I back up Redis?", "Run BGSAVE: it writes a snapshot of the data set to disk in the background."


def test_an_answer_judged_again_is_counted_once(tmp_path: Path, embedder: Embedder) -> None:
    with VectorMemory(tmp_path, embedder=embedder) as memory:
        memory.log_answer(tenant="t", interaction_id="x", messages=[{"role": "user", "content": Q}], answer=A,
                          hits=[])
        assert memory.feedback("x", "like", tenant="t", event_id="e1").experiences == 1
        # a neutral rating makes the record teach nothing; the next like must not teach it a second time
        assert memory.feedback("x", "rating", value=3, tenant="t", event_id="e2").experiences == 0
        again = memory.feedback("x", "like", tenant="t", event_id="e3")
        assert (again.experiences, again.duplicate) == (0, False)
        (hit,) = memory.search(Q, 1, tenant="t")
        assert (hit.response, hit.support) == (A, 1)
