"""The serving choice over every live held-out slice of the lineage (model/slices.py): each slice's figure per mode
in the job's metrics, the refusal rule that keeps an earlier slice's served figure, a combined rise that allows a
change, and erasure that takes a slice out of the choice."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from logmem.memory import VectorMemory
from logmem.memory.vocabulary import NEW_SLICE
from logmem.model.jobs import run_consolidation
from logmem.model.modes import served_mode
from logmem.model.slices import SliceFigures, decide, traffic_weights, worse

FIRST = ["how do I reset my router", "what is a good name for a cat", "how long do I boil an egg",
         "which planet is the largest", "how do I make cold brew", "what should I pack for a hike",
         "how do I clean a cast iron pan", "when should I water succulents"]
SECOND = ["how do I fix a flat tyre", "what wine goes with fish", "how do I descale a kettle",
          "how do I stop a door squeaking", "how often should I change my toothbrush",
          "what is the best way to learn chess", "how do I unclog a sink", "how do I fold a fitted sheet"]
# free text in a house style the tiny model learns in seconds; the probe bound is not what these tests are about
FAST = dict(lr=3e-2, epochs=15, batch_size=4, holdout=0.25, probe_bound=10.0)


def _reply(q: str) -> str:
    return f"Thank you for asking {q}. Our team will write back within one working day."


def _ingest(memory: VectorMemory, questions: list[str], prefix: str) -> None:
    """One user per interaction (`prefix` + index), so that erasing a user erases one experience."""
    memory.ingest([{"id": f"{prefix}{i}", "user": f"{prefix}{i}", "timestamp": 1_760_000_000 + i,
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": _reply(q)}],
                    "feedback": [{"turn": 1, "kind": "like"}]} for i, q in enumerate(questions)])


def _job(memory: VectorMemory, lm: Any, **params: Any) -> tuple[str, dict[str, Any]]:
    return run_consolidation(memory, copy.deepcopy(lm[0]), lm[1], tenant="default", params={**FAST, **params},
                             base_model="tiny")


def _slice(name: str, weight: float, before: float, **figures: float) -> SliceFigures:
    """A slice whose served mode before (memory+adapter of the active adapter) has the figure `before`; `figures`
    the base's vote and the student's memory+adapter."""
    return SliceFigures(name, 10, 10, weight, {"active": {"memory+adapter": before},
                                               "base": {"vote": figures["vote"]},
                                               "student": {"memory+adapter": figures["student"]}})


BEFORE = ("memory+adapter", "active")


def test_worse_and_traffic_weights() -> None:
    assert worse(0.80, 0.90, "accuracy", 0.05) and not worse(0.86, 0.90, "accuracy", 0.05)
    assert worse(1.10, 1.0, "nll", 0.05) and not worse(1.04, 1.0, "nll", 0.05)
    a, b = np.eye(3, dtype=np.float32)[:2]
    slices = {"v1": np.stack([a]), NEW_SLICE: np.stack([b])}
    traffic = np.stack([a, b, b, b]).astype(np.float32)  # three requests near the new slice, one near v1
    w = traffic_weights(slices, traffic, np.ones(4))
    assert w == pytest.approx({"v1": 2 / 6, NEW_SLICE: 4 / 6})  # add-one smoothed shares
    assert traffic_weights(slices, traffic[:1], np.array([5.0]))["v1"] == pytest.approx(6 / 7)  # support counts
    assert traffic_weights({"v1": np.stack([a])}, np.zeros((0, 3), np.float32), np.zeros(0)) == {"v1": 1.0}


def test_the_refusal_rule_keeps_an_earlier_slices_served_figure() -> None:
    # the vote ties the served mode on the combined figure but loses the old topic: the cheaper mode would win a tie
    slices = [_slice("v1", 0.5, 0.90, vote=0.70, student=0.90), _slice(NEW_SLICE, 0.5, 0.80, vote=1.0, student=0.80)]
    pool = {"vote": "base", "memory+adapter": "active"}
    choice = decide(slices, pool, BEFORE, "accuracy")
    assert choice["mode"] == "memory+adapter" and choice["allowed"]
    assert "slice v1 0.9000 -> 0.7000" in choice["refused"]["vote"]
    assert [s["figures"] for s in choice["slices"]] == [{"vote": 0.7, "memory+adapter": 0.9},
                                                        {"vote": 1.0, "memory+adapter": 0.8}]
    assert choice["combined"] == pytest.approx({"vote": 0.85, "memory+adapter": 0.85})
    # each topic served its own best mode would beat both: measured and said, not served
    assert choice["per_topic"]["routes"] == {"v1": "memory+adapter", NEW_SLICE: "vote"}
    assert choice["per_topic"]["combined"] == pytest.approx(0.95) and "would give 0.9500" in choice["reason"]
    # a promoted student that lowers the old topic, with no mode that raises the combined figure: nothing allowed
    worse_student = [_slice("v1", 0.5, 0.90, vote=0.70, student=0.80),
                     _slice(NEW_SLICE, 0.5, 0.80, vote=0.95, student=0.85)]
    refused = decide(worse_student, {"vote": "base", "memory+adapter": "student"}, BEFORE, "accuracy")
    assert not refused["allowed"] and set(refused["refused"]) == {"vote", "memory+adapter"}
    assert refused["reason"].startswith("every mode refused")


def test_a_combined_rise_allows_the_change() -> None:
    slices = [_slice("v1", 0.2, 0.90, vote=0.70, student=0.90), _slice(NEW_SLICE, 0.8, 0.80, vote=1.0, student=0.8)]
    choice = decide(slices, {"vote": "base", "memory+adapter": "active"}, BEFORE, "accuracy")
    assert choice["mode"] == "vote" and not choice["refused"]  # v1 falls, but the tenant's traffic gains more
    assert choice["combined"]["vote"] == pytest.approx(0.94)
    assert choice["served_before_combined"] == pytest.approx(0.82)


@pytest.fixture()
def drifting(tmp_path: Path, embedder: Any, tiny_lm: Any) -> tuple[VectorMemory, dict[str, Any]]:
    """A tenant after its first job on the first topic, with the second topic's logs ingested."""
    mem = VectorMemory(tmp_path / "drift", embedder=embedder)
    _ingest(mem, FIRST, "a")
    status, first = _job(mem, tiny_lm)
    assert status == "succeeded", first["gate"]
    _ingest(mem, SECOND, "b")
    yield mem, first
    mem.close()


def test_a_job_records_each_slice_figure_per_mode_and_why(drifting: tuple[VectorMemory, dict[str, Any]],
                                                          tiny_lm: Any) -> None:
    memory, first = drifting
    assert [s["name"] for s in first["serving"]["slices"]] == [NEW_SLICE]  # a first job: its own slice alone
    status, second = _job(memory, tiny_lm)
    serving = second["serving"]
    names = [s["name"] for s in serving["slices"]]
    assert names == [NEW_SLICE, first["version"]]
    assert sum(s["weight"] for s in serving["slices"]) == pytest.approx(1.0)
    old = serving["slices"][1]
    assert old["size"] == len(first["holdout_ids"]) == old["measured"]
    assert old["measured_by"]["base"].keys() == {"memory"}  # free text: the vote is not measured (nll)
    assert old["measured_by"]["active"].keys() == {"consolidated", "memory+adapter"}
    assert old["figures"].keys() == serving["figures"].keys()  # every mode of the choice, on every slice
    for mode, figure in serving["figures"].items():  # the combined figure is the weighted mean of the slices'
        assert figure == pytest.approx(sum(s["weight"] * s["figures"][mode] for s in serving["slices"]))
    assert serving["mode"] == min(serving["figures"], key=serving["figures"].get) or serving["choice"]["refused"]
    assert "over 2 slice(s)" in serving["reason"] and first["version"] in serving["reason"]
    shown = served_mode(memory, "default")
    assert shown.mode == serving["mode"] and shown.figures == pytest.approx(serving["figures"])


def test_erasing_the_users_of_a_slice_takes_it_out_of_the_choice(drifting: tuple[VectorMemory, dict[str, Any]],
                                                                   tiny_lm: Any) -> None:
    memory, first = drifting
    held = [memory.experience(i) for i in first["holdout_ids"]]
    memory.forget(user=held[0].user, tenant="default")  # a held-out experience's user: one fewer in the slice
    assert memory.active_adapter("default").version == first["version"]  # held out, not trained on: not stale
    _, second = _job(memory, tiny_lm, lr=0.0, max_steps=1)  # an untrained step: the lineage stays v1's
    old = {s["name"]: s for s in second["serving"]["slices"]}[first["version"]]
    assert old["size"] == len(held) - 1
    for e in held[1:]:
        memory.forget(user=e.user, tenant="default")
    _, third = _job(memory, tiny_lm, lr=0.0, max_steps=1)
    assert first["version"] not in [s["name"] for s in third["serving"]["slices"]]  # every one erased: no slice
