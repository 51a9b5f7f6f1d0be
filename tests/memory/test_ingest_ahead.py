"""Ingest embeds its requests ahead of their transactions, a window of batches per call in a worker thread: each
request body is embedded once, the transactions embed nothing when no other writer comes between, and what is
stored is what a batch at a time would store (the instruction that becomes shared within the ingest is stripped
from the batch that makes it shared on)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from logmem.memory import Embedder, MemoryConfig, VectorMemory
from logmem.memory.ingest import AHEAD_BATCHES

INSTRUCTION = "You are a support agent for a bike shop. Answer in one sentence."
TOPICS = ["brakes", "gears", "tyres", "chains", "saddles", "lights", "locks", "pedals", "frames", "wheels"]


def rec(i: int, question: str, answer: str, rid: str | None = None) -> dict[str, Any]:
    return {"id": rid or f"r{i}", "user": f"u{i % 3}", "timestamp": 1_700_000_000 + i,
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "feedback": [{"turn": 1, "kind": "like"}]}


class Recording:
    """The real embedder, recording each call's texts and thread."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.dim, self.name = inner, inner.dim, inner.name
        self.calls: list[tuple[str, list[str]]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append((threading.current_thread().name, list(texts)))
        return self.inner.encode(texts)


def records() -> list[dict[str, Any]]:
    out = [rec(i, f"{INSTRUCTION}\n\nHow often should I check the {t} on a {kind} bike?",
               f"Check the {t} of a {kind} bike every month.")
           for i, (t, kind) in enumerate((t, k) for k in ("road", "city", "mountain") for t in TOPICS)]
    out.insert(7, dict(out[2]))  # the same record again (its id): skipped
    out.insert(12, rec(99, out[4]["messages"][0]["content"], out[4]["messages"][1]["content"], "copy"))  # same words
    return out


def test_each_request_is_embedded_once_ahead_of_the_transactions(tmp_path: Path, embedder: Embedder) -> None:
    recording = Recording(embedder)
    config = MemoryConfig(batch_size=3)
    logs = records()
    with VectorMemory(tmp_path / "ahead", embedder=recording, config=config) as memory:  # type: ignore[arg-type]
        report = memory.ingest(logs)
        stored = {e.trigger: e for e in memory.iter_experiences()}
    assert report.read == 32 and report.skipped == 1 and report.experiences == 30 and report.merged == 1
    # windows of batches: the first of AHEAD_BATCHES // 2 batches, then AHEAD_BATCHES (31 parsed records, 3 a batch)
    sizes = [len(texts) for _, texts in recording.calls]
    first = 3 * (AHEAD_BATCHES // 2)
    assert len(sizes) == 1 + -(-(32 - first) // (3 * AHEAD_BATCHES))
    assert all(name.startswith("logmem-embed") for name, _ in recording.calls)  # none in a transaction
    embedded = [t for _, texts in recording.calls for t in texts]
    assert len(embedded) == len(set(embedded)) == 30  # every new body once; the copy and the repeat not at all
    # the instruction counted 3 times (shared_min_count) in the first batch: stripped from the first batch on
    assert all(e.instruction == INSTRUCTION for e in stored.values())
    assert not any(INSTRUCTION in t for t in embedded)

    # stored as one batch at a time stores them (no window, no worker)
    with VectorMemory(tmp_path / "batch", embedder=embedder, config=config) as memory:
        for start in range(0, len(logs), 3):
            memory.ingest(logs[start:start + 3])
        alone = {e.trigger: e for e in memory.iter_experiences()}
    assert sorted(alone) == sorted(stored)
    for trigger, e in stored.items():
        assert (e.instruction, e.response, e.support) == (alone[trigger].instruction, alone[trigger].response,
                                                          alone[trigger].support)
        assert np.allclose(e.vector, alone[trigger].vector, atol=1e-5)


def test_an_instruction_that_becomes_shared_mid_ingest_is_stripped_where_a_batch_at_a_time_strips_it(
        tmp_path: Path, embedder: Embedder) -> None:
    config = MemoryConfig(batch_size=2, shared_min_count=5)
    logs = [rec(i, f"{INSTRUCTION}\n\nIs a {t} covered by the warranty?", f"Yes, the {t} is covered.")
            for i, t in enumerate(TOPICS)]
    recording = Recording(embedder)
    with VectorMemory(tmp_path / "ahead", embedder=recording, config=config) as memory:  # type: ignore[arg-type]
        memory.ingest(logs)
        got = sorted((e.trigger, e.instruction) for e in memory.iter_experiences())
    with VectorMemory(tmp_path / "batch", embedder=embedder, config=config) as memory:
        for start in range(0, len(logs), 2):
            memory.ingest(logs[start:start + 2])
        want = sorted((e.trigger, e.instruction) for e in memory.iter_experiences())
    assert got == want
    assert [i for _, i in got].count(None) == 4  # counted 2, then 4: the first two batches keep it; 6 on: stripped
    embedded = [t for _, texts in recording.calls for t in texts]
    assert len(embedded) == len(set(embedded)) == len(logs)
