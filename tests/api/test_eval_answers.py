"""`logmem eval` answers through the runtime's answer operation: each mode's answers are the ones `answer` gives an
`Ask` in that mode, batched or not, and nothing it answers is logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from logmem.api.answering import SERVED_MODEL, Ask, Caller
from logmem.memory.errors import ConfigError
from logmem.model.evaluate import EvalItem
from logmem.model.scoring import contains_reference

PAIRS = [("Which colour is the sky?", "BLUE"), ("Which colour is the sea?", "BLUE"),
         ("Which colour is grass?", "GREEN"), ("Which colour is a lime?", "GREEN"),
         ("Which colour is snow?", "WHITE"), ("Which colour is milk?", "WHITE")]
ITEMS = [EvalItem(f"q{i}", [{"role": "user", "content": q}], [a]) for i, (q, a) in
         enumerate([("Which colour is the ocean?", "BLUE"), ("Which colour is a leaf?", "GREEN"),
                     ("Which colour is chalk?", "WHITE")])]
CALLER = Caller("acme", None, admin=True)


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs.jsonl"
    path.write_text("".join(json.dumps({
        "id": f"c{i}", "user": f"u{i}", "timestamp": 1_760_000_000 + i,
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        "feedback": [{"turn": 1, "kind": "like"}]}) + "\n" for i, (q, a) in enumerate(PAIRS)))
    return path


def _predictions(path: Path) -> dict[tuple[str, str], tuple[str, list[int]]]:
    """(mode, item id) -> (the answer, the experiences that conditioned it)."""
    rows = map(json.loads, path.read_text().splitlines())
    return {(r["mode"], r["id"]): (r["output"], r["experiences"]) for r in rows}


def test_eval_answers_as_the_answer_operation(runtime_for: Any, logs: Path, tmp_path: Path) -> None:
    runtime = runtime_for(tmp_path / "home", tenant="acme")
    try:
        runs = {}
        for batch_size in (1, 2):
            out = tmp_path / f"preds{batch_size}.jsonl"
            results, data = runtime.evaluate(CALLER, logs, ITEMS, modes=["base", "memory", "vote", "default"],
                                             max_new_tokens=4, predictions=out, batch_size=batch_size)
            runs[batch_size] = _predictions(out)
            assert [r.n for r in results] == [3, 3, 3, 3]
        assert runs[1] == runs[2]  # a batch answers as one at a time
        for mode, model, use_memory in (("vote", SERVED_MODEL, True), ("memory", SERVED_MODEL, True),
                                        ("base", runtime.base_model, False)):
            asked = "vote" if mode == "vote" else "memory" if mode == "memory" else None
            for item in ITEMS:
                answer = runtime.answer(CALLER, Ask(item.messages, model=model, max_tokens=4, use_memory=use_memory,
                                                    mode=asked, log=False))
                assert runs[1][mode, item.id] == (answer.reply.text, [h.id for h in answer.reply.experiences])
                assert bool(runs[1][mode, item.id][1]) == use_memory  # the memory modes retrieved, the base did not
        assert runtime.stats(CALLER).interactions == len(PAIRS)  # the eval's answers were logged nowhere
        assert data["serving_mode"]["mode"] == runtime.serving_mode(CALLER).mode
        with pytest.raises(ConfigError, match="need an active adapter"):
            runtime.evaluate(CALLER, logs, ITEMS, modes=["consolidated"], max_new_tokens=4)
    finally:
        runtime.close()


def test_containment_scores_a_fact_inside_a_sentence() -> None:
    assert contains_reference("The door code is 4471, press hash after.", ["4471"])
    assert contains_reference("It is BLUE.", ["blue"])
    assert not contains_reference("The door code is 44711.", ["4471"])  # whole words only
    assert not contains_reference("no idea", ["", "4471"])
