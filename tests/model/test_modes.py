"""The serving mode chosen by measurement (model/modes.py): the gate's reference is what the tenant is served now,
a job records the mode its held-out figures favour, and an operator's pin wins."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from logmem.memory import AdapterError, VectorMemory
from logmem.model.jobs import run_consolidation
from logmem.model.modes import ADAPTER_MODES, AUTO, beats, best_mode, served_mode

COLOURS = ["sky", "sea", "lake", "sapphire", "bluebell", "jeans", "ocean", "iris", "cornflower", "lapis",
           "denim", "cobalt"]
QUESTIONS = ["how do I reset my router", "what is a good name for a cat", "how long do I boil an egg",
             "which planet is the largest", "how do I make cold brew", "what should I pack for a hike",
             "how do I clean a cast iron pan", "when should I water succulents", "how can I sleep better",
             "what is a quick dinner idea", "how do I remove a stripped screw", "how do I keep bread fresh"]
LATER = ["how do I fix a flat tyre", "what wine goes with fish", "how do I descale a kettle",
         "how do I stop a door squeaking", "how often should I change my toothbrush",
         "what is the best way to learn chess", "how do I unclog a sink", "how do I fold a fitted sheet"]
# free text (no two answers alike) in a house style an adapter learns and a model reading neighbours does not
def _reply(q: str) -> str:
    return f"Thank you for asking {q}. Our team will write back within one working day."


FREE = [(q, _reply(q)) for q in QUESTIONS]
# the tiny model learns a few answers in seconds; the probe bound is not what these tests are about
FAST = dict(lr=3e-2, epochs=15, batch_size=4, holdout=0.25, probe_bound=10.0)


def _ingest(memory: VectorMemory, pairs: list[tuple[str, str]], prefix: str) -> None:
    memory.ingest([{"id": f"{prefix}{i}", "user": f"u{i}", "timestamp": 1_760_000_000 + i,
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                    "feedback": [{"turn": 1, "kind": "like"}]} for i, (q, a) in enumerate(pairs)])


@pytest.fixture()
def labels(tmp_path: Path, embedder: Any) -> VectorMemory:
    mem = VectorMemory(tmp_path / "labels", embedder=embedder)
    _ingest(mem, [(f"Which colour is the {t}?", "BLUE") for t in COLOURS], "c")
    yield mem
    mem.close()


@pytest.fixture()
def free(tmp_path: Path, embedder: Any) -> VectorMemory:
    mem = VectorMemory(tmp_path / "free", embedder=embedder)
    _ingest(mem, FREE, "f")
    yield mem
    mem.close()


def _job(memory: VectorMemory, lm: Any, **params: Any) -> tuple[str, dict[str, Any]]:
    return run_consolidation(memory, copy.deepcopy(lm[0]), lm[1], tenant="default", params={**FAST, **params},
                             base_model="tiny")


def test_beats_and_best_mode() -> None:
    assert beats(0.81, 0.80, "accuracy", 0.0) and not beats(0.80, 0.80, "accuracy", 0.0)
    assert beats(1.0, 2.0, "nll", 0.02) and not beats(1.99, 2.0, "nll", 0.02)
    assert best_mode({"memory": 0.6, "vote": 0.7, "consolidated": 0.9}, "accuracy") == "consolidated"
    assert best_mode({"memory": 1.2, "consolidated": 0.4, "memory+adapter": 0.5}, "nll") == "consolidated"
    assert best_mode({"memory": 0.7, "vote": 0.7, "memory+adapter": 0.7}, "accuracy") == "vote"  # the cheaper


def test_a_new_tenant_is_served_auto(free: VectorMemory) -> None:
    mode = served_mode(free, "default")
    assert (mode.mode, mode.source, mode.adapter, mode.choose) == (AUTO, "default", None, "auto")


def test_label_like_logs_keep_the_vote_and_the_adapter_that_does_not_beat_it_is_kept_rejected(
        labels: VectorMemory, tiny_lm: Any) -> None:
    status, metrics = _job(labels, tiny_lm)
    assert status == "rejected"
    serving = metrics["serving"]
    assert serving["metric"] == "accuracy" and serving["served_before"] == "vote"
    assert serving["figures"]["vote"] == 1.0  # every answer is BLUE: the memory's vote is always right
    assert serving["mode"] == "vote" == best_mode(serving["figures"], "accuracy")
    assert "does not beat the served mode vote 1.0000" in metrics["gate"]
    kept = labels.store.get_adapter(version=metrics["version"])  # registered, rejected, with the figures
    assert kept.status == "rejected" and kept.metrics["serving"]["student"].keys() == set(ADAPTER_MODES)
    assert labels.active_adapter("default") is None
    mode = served_mode(labels, "default")
    assert (mode.mode, mode.source, mode.metric) == ("vote", "measured", "accuracy")


def test_free_text_logs_serve_the_adapter_that_beats_memory_and_a_job_must_beat_that(
        free: VectorMemory, tiny_lm: Any) -> None:
    status, first = _job(free, tiny_lm)
    serving = first["serving"]
    assert status == "succeeded", first["gate"]
    assert serving["metric"] == "nll" and "vote" not in serving["figures"]  # free text: auto generates freely
    assert serving["mode"] == best_mode(serving["figures"], "nll") and serving["mode"] in ADAPTER_MODES
    assert serving["figures"][serving["mode"]] < serving["figures"]["memory"]
    mode = served_mode(free, "default")
    assert (mode.mode, mode.adapter, mode.source) == (serving["mode"], first["version"], "measured")

    # an untrained step on from the active adapter answers as it does: it beats the bare base, not the served mode
    _ingest(free, [(q, _reply(q)) for q in LATER[:4]], "g")
    status, second = _job(free, tiny_lm, lr=0.0, max_steps=1)
    assert status == "rejected"
    assert f"does not beat the served mode {serving['mode']} ({first['version']})" in second["gate"]
    assert free.active_adapter("default").version == first["version"]
    _ingest(free, [(q, _reply(q)) for q in LATER[4:]], "h")
    status, third = _job(free, tiny_lm, lr=0.0, max_steps=1, gate_reference="base")
    assert status == "succeeded", third["gate"]  # the old reference: the bare base model


def test_a_pin_wins_and_a_measured_mode_lapses_with_its_adapter(free: VectorMemory, tiny_lm: Any) -> None:
    status, first = _job(free, tiny_lm)
    assert status == "succeeded", first["gate"]
    free.store.pin_serving_mode(tenant="default", mode="memory")
    mode = served_mode(free, "default")
    assert (mode.mode, mode.source, mode.adapter) == ("memory", "pinned", None)
    assert mode.figures == first["serving"]["figures"]  # the measured figures stay in view
    with pytest.raises(AdapterError, match="a serving mode is one of"):
        free.store.pin_serving_mode(tenant="default", mode="sometimes")
    free.store.pin_serving_mode(tenant="default", mode=None)
    assert served_mode(free, "default").source == "measured"
    free.rollback_adapter("default")  # the adapter it was measured with is no longer served
    mode = served_mode(free, "default")
    assert (mode.mode, mode.source) == (AUTO, "default")
    free.store.pin_serving_mode(tenant="default", mode="consolidated")  # an adapter mode with no adapter active
    assert served_mode(free, "default").mode == AUTO


def test_the_generator_answers_in_the_served_mode_by_default(labels: VectorMemory, tiny_lm: Any) -> None:
    from logmem.model.config import GeneratorConfig
    from logmem.model.generator import MemoryGenerator

    gen = MemoryGenerator(tiny_lm[0], tiny_lm[1], labels, config=GeneratorConfig(vote_prior=100.0))
    ask = [{"role": "user", "content": "Which colour is the summer sky?"}]
    reply = gen.chat(ask, max_new_tokens=4, log=False)
    assert (reply.mode, reply.chosen_by, reply.text) == (AUTO, "vote", "BLUE")  # label-like: auto votes
    labels.store.record_serving_mode(tenant="default", mode="memory", adapter=None, metric="accuracy",
                                     figures={"memory": 0.9, "vote": 0.8}, reason="measured")
    reply = gen.chat(ask, max_new_tokens=4, log=False)
    assert (reply.mode, reply.chosen_by) == ("memory", "model") and reply.experiences
    version = labels.store.add_adapter(tenant="default", base_model="tiny", method="sft", seed=0, status="promoted",
                                       metrics={}, covered=[], path="unused")
    labels.activate_adapter(version, tenant="default")
    labels.store.record_serving_mode(tenant="default", mode="consolidated", adapter=version, metric="accuracy",
                                     figures={"consolidated": 0.95}, reason="measured")
    reply = gen.chat(ask, max_new_tokens=4, log=False, adapter=version)
    assert (reply.mode, reply.experiences, reply.memory_tokens) == ("consolidated", [], 0)  # no memory in its prompt
    assert gen.chat(ask, max_new_tokens=4, log=False).mode == AUTO  # the model without the mode's adapter
    pinned = MemoryGenerator(tiny_lm[0], tiny_lm[1], labels, config=GeneratorConfig(choose="off"))
    assert pinned.chat(ask, max_new_tokens=4, log=False, adapter=version).mode == "memory"  # choose names a mode


def test_eval_default_answers_as_the_tenant_is_served(labels: VectorMemory, tiny_lm: Any, tmp_path: Path) -> None:
    import json

    from logmem.model.evaluate import EvalItem, evaluate

    items = [EvalItem(f"q{i}", [{"role": "user", "content": f"Which colour is the {t}?"}], ["BLUE"])
             for i, t in enumerate(["night sky", "deep ocean", "glacier"])]
    out = tmp_path / "preds.jsonl"
    results = evaluate(tiny_lm[0], tiny_lm[1], labels, items, modes=["default", "vote", "memory"], max_new_tokens=4,
                       predictions=out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    served = [r["output"] for r in rows if r["mode"] == "default"]
    assert served == [r["output"] for r in rows if r["mode"] == "vote"] == ["BLUE"] * 3  # auto votes here
    assert served != [r["output"] for r in rows if r["mode"] == "memory"]
    assert [r.accuracy for r in results] == [1.0, 1.0, 0.0]


def test_constrained_free_generation_keeps_to_the_answers_the_memory_gave(labels: VectorMemory, free: VectorMemory,
                                                                        tiny_lm: Any) -> None:
    from logmem.model.config import GeneratorConfig
    from logmem.model.generator import MemoryGenerator

    _ingest(labels, [(f"Which colour is the {t}?", "RED") for t in ("tomato", "ruby", "cherry", "poppy")], "r")
    config = GeneratorConfig(choose="off", constrain=True)
    ask = [{"role": "user", "content": "Which colour is the strawberry?"}]
    reply = MemoryGenerator(tiny_lm[0], tiny_lm[1], labels, config=config).chat(ask, max_new_tokens=8, log=False)
    assert reply.chosen_by == "model" and reply.text in {"RED", "BLUE"}  # generated, but only what the memory holds
    free_reply = MemoryGenerator(tiny_lm[0], tiny_lm[1], free, config=config).chat(
        [{"role": "user", "content": "how do I reset my modem"}], max_new_tokens=8, log=False)
    unconstrained = MemoryGenerator(tiny_lm[0], tiny_lm[1], free, config=GeneratorConfig(choose="off")).chat(
        [{"role": "user", "content": "how do I reset my modem"}], max_new_tokens=8, log=False)
    assert free_reply.text == unconstrained.text  # free text: answers do not repeat, nothing is kept
