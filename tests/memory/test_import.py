"""`VectorMemory.import_experiences`: experiences written as they are, in bulk, for one tenant, searchable at once
(in this process and in another over the same home), with their fields kept; a vector of the wrong width refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from logmem.memory import DimensionMismatchError, Embedder, Imported, VectorMemory

FACTS = [("Which port does Redis use by default?", "6379."), ("What is the capital of Australia?", "Canberra."),
         ("How do I list files in a folder?", "ls -la")]


def test_imported_experiences_are_found_with_their_fields(tmp_path: Path, embedder: Embedder) -> None:
    with VectorMemory(tmp_path / "home", embedder=embedder) as memory:
        xb = embedder.encode([q for q, _ in FACTS])
        items = [Imported(q, a, x, user="ann", lesson=f"lesson {i}", alpha=3.0, beta=1.0, created_at=1.7e9 + i)
                 for i, ((q, a), x) in enumerate(zip(FACTS, xb))]
        ids = memory.import_experiences(items, tenant="acme", batch=2)  # two transactions
        assert len(ids) == 3 and ids == sorted(ids)
        (hit,) = memory.search("default port of Redis?", 1, tenant="acme")
        assert (hit.id, hit.response, hit.lesson) == (ids[0], "6379.", "lesson 0")
        assert memory.search("default port of Redis?", 1, tenant="globex") == []  # acme's alone
        row = memory.experience(ids[1], tenant="acme")
        assert (row.user, row.alpha, row.beta, row.created_at) == ("ann", 3.0, 1.0, 1.7e9 + 1)
    with VectorMemory(tmp_path / "home", embedder=embedder) as again:  # another process's view: from SQL
        assert [h.id for h in again.search("capital of Australia", 1, tenant="acme")] == [ids[1]]


def test_a_vector_of_the_wrong_width_is_refused_before_anything_is_written(tmp_path: Path,
                                                                          embedder: Embedder) -> None:
    with VectorMemory(tmp_path / "home", embedder=embedder) as memory:
        good = Imported("q", "a", np.ones(memory.d, dtype=np.float32))
        with pytest.raises(DimensionMismatchError, match="expected"):
            memory.import_experiences([good, Imported("q2", "a2", np.ones(3, dtype=np.float32))], tenant="acme")
        assert memory.stats("acme").experiences == 0


def test_imported_shared_instructions_are_stripped_before_embedding(tmp_path: Path, embedder: Embedder) -> None:
    note = "You are the support bot of Acme. Answer in one sentence."
    with VectorMemory(tmp_path / "home", embedder=embedder) as memory:
        assert memory.instructions.known("acme") == set()
        memory.import_experiences([], tenant="acme", instructions={note: memory.config.shared_min_count - 1})
        assert memory.instructions.known("acme") == set()  # not common yet
        memory.import_experiences([], tenant="acme", instructions={note: 1})
        assert memory.instructions.known("acme") == {note}  # counted as ingesting that many requests would
        assert memory.instructions.known("globex") == set()
        assert memory.instructions.split("acme", f"{note}\n\nWhich port does Redis use?") == (
            note, "Which port does Redis use?")
