"""Liked question-and-answer logs the memory tests share: one record per pair, each liked by its own user."""

from __future__ import annotations

from typing import Any

T0 = 1_700_000_000.0
QA = [
    ("How do I reverse a list in Python?", "Use my_list[::-1] for a reversed copy, or my_list.reverse() in place."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("How many bytes are in a kibibyte?", "A kibibyte is 1024 bytes."),
    ("How do I undo my last git commit but keep the changes?", "Run git reset --soft HEAD~1."),
    ("Which planet is the largest in the solar system?", "Jupiter is the largest planet."),
    ("How do I sort a dictionary by value in Python?", "sorted(d.items(), key=lambda kv: kv[1])."),
    ("What does HTTP status 404 mean?", "404 means the server found nothing at that URL."),
    ("How do I count lines in a file with bash?", "wc -l < file prints the number of lines."),
]


def rec(i: int, *, tenant: str = "acme", user: str | None = None) -> dict[str, Any]:
    """The log of pair `i` in `tenant`, liked."""
    q, a = QA[i]
    return {"id": f"r{i}", "tenant": tenant, "user": user or f"u{i}", "timestamp": T0 + i,
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "feedback": [{"turn": 1, "kind": "like"}]}
