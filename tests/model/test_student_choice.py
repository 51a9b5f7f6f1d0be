"""Which student a consolidation job trains when nobody says (ConsolidationConfig.with_memory=None): the
memory+adapter one where the retrieved experiences lower the base model's held-out response NLL, the bare one
otherwise; a job that trains on from an active adapter keeps its kind."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from logmem.memory import VectorMemory
from logmem.model.config import ConsolidationConfig, GeneratorConfig
from logmem.model.gate import choose_student
from logmem.model.jobs import run_consolidation
from logmem.model.modes import prepare_held_out
from logmem.model.training import learning_rate

ROOMS = [3, 7, 12, 19, 24, 31, 40, 58]
CODES = ["4821", "9034", "1177", "6650", "2398", "7713", "5046", "8362"]
FAST = dict(lr=3e-2, epochs=15, batch_size=4, holdout=0.25, probe_bound=10.0)


def _ingest(memory: VectorMemory, pairs: list[tuple[str, str]], prefix: str) -> None:
    memory.ingest([{"id": f"{prefix}{i}", "user": f"u{i}", "timestamp": 1_760_000_000 + i,
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                    "feedback": [{"turn": 1, "kind": "like"}]} for i, (q, a) in enumerate(pairs)])


@pytest.fixture()
def codes(tmp_path: Path, embedder: Any) -> VectorMemory:
    """Door codes only the memory knows, each asked twice in other words: a held-out question's nearest
    experience carries its answer."""
    mem = VectorMemory(tmp_path / "codes", embedder=embedder)
    pairs = [(f"What is the door code of room {r}?", c) for r, c in zip(ROOMS, CODES)]
    pairs += [(f"Room {r}: which code opens its door?", c) for r, c in zip(ROOMS, CODES)]
    _ingest(mem, pairs, "d")
    yield mem
    mem.close()


def _held(memory: VectorMemory, tokenizer: Any) -> Any:
    held = [e for e in memory.iter_experiences("default") if e.trigger.startswith("What is")][:4]
    return prepare_held_out(held, tokenizer, memory, "default", GeneratorConfig(k=4))


def test_a_model_that_reads_its_memory_gets_the_memory_student(smollm: Any, codes: VectorMemory) -> None:
    model, tokenizer = smollm
    config, choice = choose_student(model, tokenizer, _held(codes, tokenizer), ConsolidationConfig())
    assert config.with_memory is True and choice["with_memory_student"] is True
    assert choice["with_memory"] < 0.5 * choice["bare"]  # the codes are read off the neighbours, not guessed
    assert "memory+adapter" in choice["reason"]
    assert learning_rate(config) == 5e-4


def test_a_model_the_memory_does_not_help_gets_the_bare_student(tiny_lm: Any, codes: VectorMemory) -> None:
    model, tokenizer = tiny_lm  # random weights: its next token does not depend on what the prompt says
    config, choice = choose_student(model, tokenizer, _held(codes, tokenizer), ConsolidationConfig())
    assert config.with_memory is False and choice["with_memory_student"] is False
    assert choice["with_memory"] >= choice["bare"] * (1 - ConsolidationConfig().gate_margin)
    assert learning_rate(config) == 2.5e-4 and learning_rate(ConsolidationConfig(lr=1e-3)) == 1e-3


def test_the_job_records_its_choice_and_a_later_job_keeps_the_active_kind(tiny_lm: Any,
                                                                          codes: VectorMemory) -> None:
    promote = {**FAST, "gate_reference": "base", "gate_margin": 0.0}  # the tiny model learns codes slowly
    status, first = run_consolidation(codes, copy.deepcopy(tiny_lm[0]), tiny_lm[1], tenant="default",
                                      params={**promote, "with_memory": True}, base_model="tiny")
    assert status == "succeeded", first["gate"]
    assert first["with_memory"] is True and "student_choice" not in first
    _ingest(codes, [(f"What is the door code of room {r + 100}?", c[::-1]) for r, c in zip(ROOMS, CODES)], "n")
    # the choice left to the job: the random model would get a bare student, but training on from the active
    # memory+adapter one keeps its kind instead of retraining from the base over everything
    status, second = run_consolidation(codes, copy.deepcopy(tiny_lm[0]), tiny_lm[1], tenant="default",
                                       params=promote, base_model="tiny")
    assert second["with_memory"] is True and second["restart"] is None and second["parent"] == first["version"]
    assert "student_choice" not in second


def test_a_first_job_left_to_choose_measures_and_says_why(tiny_lm: Any, codes: VectorMemory) -> None:
    status, metrics = run_consolidation(codes, copy.deepcopy(tiny_lm[0]), tiny_lm[1], tenant="default",
                                        params=FAST, base_model="tiny")
    choice = metrics["student_choice"]
    assert metrics["with_memory"] is False and choice["with_memory_student"] is False
    assert choice["bare"] > 0 and choice["with_memory"] > 0 and "a bare student" in choice["reason"]
    assert metrics["lr"] == FAST["lr"]
