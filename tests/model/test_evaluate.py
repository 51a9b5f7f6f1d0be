"""The quality harness on a tiny model: batched answers equal one-at-a-time answers, the adapter modes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from logmem.memory import VectorMemory
from logmem.model.consolidate import ConsolidationConfig, consolidate
from logmem.model.evaluate import EvalItem, evaluate, is_correct
from logmem.model.generator import MemoryGenerator
from logmem.model.loading import load_adapter

PAIRS = [("Which colour is the sky?", "BLUE"), ("Which colour is the sea?", "BLUE"),
         ("Which colour is grass?", "GREEN"), ("Which colour is a lime?", "GREEN"),
         ("Which colour is snow?", "WHITE"), ("Which colour is milk?", "WHITE")]
ITEMS = [EvalItem(f"q{i}", [{"role": "user", "content": q}], [a]) for i, (q, a) in
         enumerate([("Which colour is the ocean?", "BLUE"), ("Which colour is a leaf?", "GREEN"),
                     ("Which colour is chalk?", "WHITE"), ("Which colour is a lake?", "BLUE"),
                     ("Which colour is a frog, a lime and a very long list of other green things?", "GREEN")])]


@pytest.fixture()
def memory(tmp_path: Path, embedder) -> VectorMemory:  # type: ignore[no-untyped-def]
    mem = VectorMemory(tmp_path / "home", embedder=embedder)
    mem.ingest([{"id": f"c{i}", "user": f"u{i}", "timestamp": 1_760_000_000 + i,
                 "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                 "feedback": [{"turn": 1, "kind": "like"}]} for i, (q, a) in enumerate(PAIRS)])
    yield mem
    mem.close()


def _outputs(path: Path) -> list[tuple[str, str, str]]:
    return [(r["mode"], r["id"], r["output"]) for r in map(json.loads, path.read_text().splitlines())]


def test_batched_eval_answers_as_one_at_a_time(tiny_lm, memory: VectorMemory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    runs = {}
    for batch_size in (1, 3):
        out = tmp_path / f"preds{batch_size}.jsonl"
        results = evaluate(model, tok, memory, ITEMS, modes=["knn", "base", "memory"], max_new_tokens=4,
                           predictions=out, batch_size=batch_size)
        runs[batch_size] = (_outputs(out), [(r.mode, r.n, r.correct) for r in results])
    assert runs[1] == runs[3]
    assert [n for _, n, _ in runs[1][1]] == [5, 5, 5]
    knn = [o for o in runs[1][0] if o[0] == "knn"]
    assert sum(is_correct(o[2], item.reference) for o, item in zip(knn, ITEMS)) >= 4  # the neighbours' vote
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        evaluate(model, tok, memory, ITEMS, modes=["base"], batch_size=0)


def test_adapter_modes_answer_as_the_unmerged_adapter(tiny_lm, memory: VectorMemory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    outcome = consolidate(model, tok, memory, config=ConsolidationConfig(lr=1e-2, epochs=4, batch_size=2,
                                                                          holdout=0.34, probe_bound=10.0,
                                                                          gate_reference="base"))
    outcome.adapter.save_pretrained(str(tmp_path / "adapter"))
    unmerged = load_adapter(copy.deepcopy(tiny_lm[0]), tmp_path / "adapter")
    want = [MemoryGenerator(unmerged, tok).chat(item.messages, max_new_tokens=4).text for item in ITEMS]
    out = tmp_path / "preds.jsonl"
    evaluate(copy.deepcopy(tiny_lm[0]), tok, memory, ITEMS, modes=["consolidated"], max_new_tokens=4,
             predictions=out, adapter=tmp_path / "adapter", batch_size=2)
    assert [o[2] for o in _outputs(out)] == want
    base = [MemoryGenerator(tiny_lm[0], tok).chat(item.messages, max_new_tokens=4).text for item in ITEMS]
    assert want != base  # the adapter changed the answers: the comparison above means something
