"""Consolidation that accumulates, on a tiny model: each job trains on from the active adapter (new experiences
plus a bounded replay), records its lineage, is gated against forgetting, and a rebuild leaves a forgotten
experience out of the weights."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from logmem.memory import VectorMemory
from logmem.memory.store import ExperienceData
from logmem.model.config import ConsolidationConfig
from logmem.model.jobs import run_consolidation
from logmem.model.lineage import forgetting_check, lineage, plan_job, replay_sample, replay_size
from logmem.model.loading import load_adapter
from logmem.model.pairs import build_pairs, response_nll

BLUE = ["sky", "sea", "lake", "sapphire", "bluebell", "jeans", "ocean", "iris", "cornflower", "lapis",
        "denim", "cobalt"]
RED = ["tomato", "ruby", "cherry", "strawberry", "poppy", "ladybird", "lobster", "brick", "cardinal", "rose",
       "raspberry", "chili"]
# learns the tiny model's few answers in a few seconds; the probe is not what these tests are about, nor the
# served mode (the vote answers these one-answer logs perfectly): the lineage is gated against the bare base
# eval_every=0: the weights of the last step, as these tests' thresholds were set on (the held-out slice of a few
# experiences picks an earlier step's now and then; tests/model/test_early_stop.py tests that choice)
FAST = dict(lr=3e-2, epochs=15, batch_size=4, holdout=0.25, probe_bound=10.0, gate_reference="base", eval_every=0)


def _records(things: list[str], answer: str, prefix: str) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "user": f"{prefix}-u{i}", "timestamp": 1_760_000_000 + i,
             "messages": [{"role": "user", "content": f"Which colour is the {t}?"},
                          {"role": "assistant", "content": answer}],
             "feedback": [{"turn": 1, "kind": "like"}]} for i, t in enumerate(things)]


@pytest.fixture()
def memory(tmp_path: Path, embedder) -> VectorMemory:  # type: ignore[no-untyped-def]
    mem = VectorMemory(tmp_path / "home", embedder=embedder)
    mem.ingest(_records(BLUE, "BLUE", "b"))
    yield mem
    mem.close()


def _job(memory: VectorMemory, tiny_lm, **params: Any) -> tuple[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    return run_consolidation(memory, copy.deepcopy(tiny_lm[0]), tiny_lm[1], tenant="default",
                             params={**FAST, **params}, base_model="tiny")


def _nll(memory: VectorMemory, tiny_lm, path: str, experiences: list[ExperienceData]) -> float:  # type: ignore[no-untyped-def]
    tok = tiny_lm[1]
    model = load_adapter(copy.deepcopy(tiny_lm[0]), path)
    return response_nll(model, build_pairs(experiences, tok, None, "default", ConsolidationConfig()), tok.pad_token_id)


def _with_answer(e: ExperienceData, answer: str) -> ExperienceData:
    return replace(e, response=answer)


def test_a_second_job_trains_on_from_the_first_and_records_its_lineage(memory: VectorMemory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    status, first = _job(memory, tiny_lm)
    assert status == "succeeded", first["gate"]
    v1 = memory.active_adapter("default")
    assert v1 is not None and v1.parent is None and set(v1.holdout) == set(first["holdout_ids"])
    assert first["parent"] is None and first["replay"] == 0

    memory.ingest(_records(RED, "RED", "r"))
    config = ConsolidationConfig(**FAST, replay=0.5, replay_min=2)
    plan = plan_job(memory, "default", config)
    red = {e.id for e in memory.iter_experiences("default") if e.response == "RED"}
    assert {e.id for e in plan.new} == red  # neither what v1 covers nor what it held out
    assert {e.id for e in plan.replay_pool} == set(v1.covered) and plan.parent == v1 and set(plan.slices) == {"v1"}

    status, second = _job(memory, tiny_lm, replay=0.5, replay_min=2)
    assert status == "succeeded", second["gate"]
    v2 = memory.active_adapter("default")
    assert v2 is not None and (v2.version, v2.parent, v2.previous) == (second["version"], v1.version, v1.version)
    assert second["train"] == 9 and second["replay"] == replay_size(9, len(v1.covered), config) == 4
    taught = set(v2.covered)
    replayed = {e.id for e in replay_sample(plan.replay_pool, 9, config)}  # seeded: the job's sample again
    assert taught - red == replayed <= set(v1.covered)
    assert taught & red == red - set(v2.holdout) and not taught & set(v1.holdout)
    assert [a.version for a in lineage(memory.adapters("default"), v2.version)] == [v2.version, v1.version]
    assert set(v2.metrics["forgetting"]) == {"v1"} and "earlier held-out slices kept" in v2.metrics["gate"]
    # the continued adapter still answers what only the first job taught
    held = [e for e in memory.iter_experiences("default") if e.id in set(v1.holdout)]
    assert _nll(memory, tiny_lm, v2.path, held) < _nll(memory, tiny_lm, v2.path,
                                                       [_with_answer(e, "RED") for e in held])


def test_the_gate_rejects_an_adapter_that_forgets_with_the_figures(memory: VectorMemory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    assert _job(memory, tiny_lm)[0] == "succeeded"
    v1 = memory.active_adapter("default")
    memory.ingest(_records(RED, "RED", "r"))
    # the tiny model's logits are bounded (its NLLs move by ~1 nat at most): a bound that tight
    tight = dict(forget_bound=0.0, forget_slack=0.1)
    # the behaviour before accumulation: a fresh adapter on the new experiences alone
    status, metrics = _job(memory, tiny_lm, start="base", replay=0.0, **tight)
    assert status == "rejected"
    rejected = memory.store.get_adapter(version=metrics["version"])
    assert rejected.status == "rejected" and rejected.parent is None
    figures = rejected.metrics["forgetting"]["v1"]
    assert figures["student_nll"] > figures["bound"] > figures["reference_nll"]
    assert rejected.metrics["gate"].startswith("forgets what earlier adapters held: slice of v1: NLL")
    assert memory.active_adapter("default") == v1  # still serving what the first job taught
    assert all(e.consolidated_in is None for e in memory.iter_experiences("default") if e.response == "RED")


def test_forgetting_check_bounds_each_slice() -> None:
    config = ConsolidationConfig(forget_bound=0.5, forget_slack=0.1)
    ok, why, figures = forgetting_check({"v1": 0.2, "v2": 1.0}, {"v1": 0.39, "v2": 1.5}, config)
    assert ok and figures["v1"]["bound"] == pytest.approx(0.4) and "v2 1.0000 -> 1.5000" in why
    ok, why, _ = forgetting_check({"v1": 0.2, "v2": 1.0}, {"v1": 0.41, "v2": 1.0}, config)
    assert not ok and why == "forgets what earlier adapters held: slice of v1: NLL 0.2000 -> 0.4100 (bound 0.4000)"
    assert forgetting_check({}, {}, config)[:2] == (True, "no earlier held-out slice")


def test_replay_is_bounded_by_its_cap_not_by_what_was_consolidated() -> None:
    config = ConsolidationConfig(replay=1.0, replay_min=32, replay_max=512)
    assert [replay_size(n, 10**6, config) for n in (0, 10, 100, 10**5)] == [32, 32, 100, 512]
    assert replay_size(100, 40, config) == 40 and replay_size(100, 10**6, replace(config, replay=0.0)) == 0


def test_a_rebuild_leaves_the_forgotten_experience_out_of_the_weights(memory: VectorMemory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    memory.ingest([{"id": "zephyr", "user": "uz", "messages": [
        {"role": "user", "content": "What is the launch code of project Zephyr?"},
        {"role": "assistant", "content": "7421"}], "feedback": [{"turn": 1, "kind": "like"}]}])
    (zephyr,) = [e for e in memory.iter_experiences("default") if e.response == "7421"]
    status, first = _job(memory, tiny_lm, seed=2)
    assert status == "succeeded", first["gate"]
    memory.ingest(_records(RED[:6], "RED", "r"))  # a second job, so that the lineage has two adapters
    status, second = _job(memory, tiny_lm, seed=2, gate_margin=0.005)  # 6 new ones move the tiny model little
    assert status == "succeeded", second["gate"]
    v1, v2 = (memory.store.get_adapter(version=m["version"]) for m in (first, second))
    assert zephyr.id in v1.covered and v2.parent == v1.version
    rest = [e for e in memory.iter_experiences("default") if e.id != zephyr.id]
    tok = tiny_lm[1]
    base = {e.id: response_nll(tiny_lm[0], build_pairs([e], tok, None, "default", ConsolidationConfig()),
                               tok.pad_token_id) for e in [zephyr, *rest]}
    lineage_nll = {e.id: _nll(memory, tiny_lm, v2.path, [e]) for e in [zephyr, *rest]}
    memory.forget(id=zephyr.id)
    assert [memory.store.get_adapter(version=v).status for v in (v1.version, v2.version)] == ["stale", "stale"]

    status, third = _job(memory, tiny_lm, seed=2)  # no --rebuild needed: the active adapter is stale
    assert status == "succeeded", third["gate"]
    v3 = memory.active_adapter("default")
    assert v3 is not None and v3.parent is None and third["restart"].startswith("the active adapter v2 is stale")
    assert set(v3.covered) | set(v3.holdout) == {e.id for e in rest}  # all that is left, and only that
    rebuilt = {e.id: _nll(memory, tiny_lm, v3.path, [e]) for e in [zephyr, *rest]}
    # the tiny model learns answers, hardly questions: the lineage made "7421" likelier than the base did, the
    # rebuilt adapter does not (the answer it was never taught), and keeps what the others taught
    assert lineage_nll[zephyr.id] < base[zephyr.id] - 0.1
    assert rebuilt[zephyr.id] > base[zephyr.id] - 0.02 and rebuilt[zephyr.id] > lineage_nll[zephyr.id] + 0.1
    assert all(rebuilt[e.id] < base[e.id] for e in rest)
    assert sum(base[e.id] - rebuilt[e.id] for e in rest) / len(rest) > 0.3
    assert not Path(v1.path).exists() and not Path(v2.path).exists()  # the weights that held it are deleted


SHAPES = ["coin", "ball", "wheel", "plate", "moon", "orange", "button", "ring", "pizza", "clock", "globe", "pearl"]


@pytest.mark.slow
def test_two_jobs_in_sequence_on_the_real_model(tmp_path: Path, embedder, smollm) -> None:  # type: ignore[no-untyped-def]
    from logmem.model.generator import MemoryGenerator

    model, tok = smollm
    # a few steps that teach a constant answer to a bare student (asked below without memory); the probe bound is
    # not what this test is about
    params = dict(lr=1e-3, epochs=2, batch_size=4, holdout=0.25, probe_bound=0.5, gate_reference="base",
                  with_memory=False)

    def answer(path: str, question: str) -> str:
        merged = load_adapter(copy.deepcopy(model), path, merge=True)
        return MemoryGenerator(merged, tok, None).chat([{"role": "user", "content": question}],
                                                        max_new_tokens=6).text.strip()

    with VectorMemory(tmp_path / "home", embedder=embedder) as memory:
        memory.ingest(_records(BLUE[:8], "BLUE", "b"))
        status, first = run_consolidation(memory, copy.deepcopy(model), tok, tenant="default", params=params,
                                          base_model="smollm2")
        assert status == "succeeded", first["gate"]
        memory.ingest([{"id": f"s{i}", "user": f"s-u{i}", "messages": [
            {"role": "user", "content": f"What shape is the {t}?"}, {"role": "assistant", "content": "ROUND"}],
            "feedback": [{"turn": 1, "kind": "like"}]} for i, t in enumerate(SHAPES[:8])])
        status, second = run_consolidation(memory, copy.deepcopy(model), tok, tenant="default", params=params,
                                           base_model="smollm2")
        assert status == "succeeded", second["gate"]
        assert (second["parent"], second["train"], second["replay"]) == (first["version"], 6, 6)
        v2 = memory.active_adapter("default")
        assert v2 is not None and v2.version == second["version"] and v2.parent == first["version"]
        assert answer(v2.path, "Which colour is the kingfisher?") == "BLUE"  # what job 1 taught, kept
        assert answer(v2.path, "What shape is the bagel?") == "ROUND"  # what job 2 taught
