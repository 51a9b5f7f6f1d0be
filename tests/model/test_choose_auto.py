"""choose="auto": the vote for a tenant whose answers repeat (labels), free generation for the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from logmem.memory import ConfigError, VectorMemory
from logmem.model import generator as generator_module
from logmem.model.config import GeneratorConfig
from logmem.model.generator import MemoryGenerator

LABELS = ["BILLING", "SHIPPING", "RETURNS"]
TOPICS = ["my invoice shows a double charge", "where is my parcel", "how do I send the shoes back",
          "the card was charged twice this month", "tracking number does not work", "refund for a broken lamp",
          "I was billed for a cancelled plan", "delivery is a week late", "can I return an opened box"]
FREE = [("how do I reset my router", "Hold the reset button for ten seconds, then wait for the lights."),
        ("what is a good name for a cat", "Miso, Pepper or Juniper are popular choices."),
        ("how long do I boil an egg", "Nine minutes for a firm yolk, six for a soft one."),
        ("which planet is the largest", "Jupiter, by a wide margin."),
        ("how do I make cold brew", "Steep coarse coffee in cold water for about sixteen hours.")]


def _ingest(memory: VectorMemory, tenant: str, pairs: list[tuple[str, str]]) -> None:
    memory.ingest([{"id": f"{tenant}-{i}", "messages": [{"role": "user", "content": q},
                                                          {"role": "assistant", "content": a}],
                    "feedback": [{"turn": 1, "kind": "like"}]} for i, (q, a) in enumerate(pairs)], tenant=tenant)


@pytest.fixture
def memory(tmp_path: Path, embedder: Any) -> VectorMemory:
    mem = VectorMemory(tmp_path / "home", embedder=embedder)
    _ingest(mem, "labels", [(q, LABELS[i % 3]) for i, q in enumerate(TOPICS)])
    _ingest(mem, "free", FREE)
    yield mem
    mem.close()


def test_answer_repetition_tells_labels_from_free_text(memory: VectorMemory) -> None:
    assert memory.answer_repetition("labels") == pytest.approx(1 - 3 / len(TOPICS))
    assert memory.answer_repetition("free") == 0.0
    assert memory.answer_repetition("nobody") == 0.0


def test_auto_votes_where_answers_repeat_and_generates_where_they_do_not(tiny_lm: Any,
                                                                         memory: VectorMemory) -> None:
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(choose="auto", vote_prior=100.0))
    assert gen.votes("labels") and not gen.votes("free")
    labelled = gen.chat([{"role": "user", "content": "I got charged two times"}], tenant="labels",
                        max_new_tokens=4, log=False)
    assert labelled.chosen_by == "vote" and labelled.text in LABELS  # kept to the answers the memory supports
    free = gen.chat([{"role": "user", "content": "how do I reset my modem"}], tenant="free", max_new_tokens=4,
                    log=False)
    assert free.chosen_by == "model"
    assert MemoryGenerator(model, tok, memory, config=GeneratorConfig(choose="off")).votes("labels") is False
    assert MemoryGenerator(model, tok, memory, config=GeneratorConfig(choose="vote")).votes("free") is True


def test_auto_follows_a_tenant_whose_answers_start_to_repeat(tiny_lm: Any, memory: VectorMemory,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(choose="auto"))
    assert not gen.votes("free")
    _ingest(memory, "free", [(f"ticket {i}: {q}", "ESCALATE") for i, (q, _) in enumerate(FREE * 3)])
    assert not gen.votes("free")  # measured a moment ago: not again yet
    monkeypatch.setattr(generator_module, "AUTO_REFRESH_SECONDS", 0.0)
    assert gen.votes("free")  # most of its experiences now share one answer


def test_auto_threshold_is_checked() -> None:
    with pytest.raises(ConfigError, match="auto_repetition"):
        GeneratorConfig(choose="auto", auto_repetition=1.5)
    with pytest.raises(ConfigError, match="choose"):
        GeneratorConfig(choose="sometimes")
