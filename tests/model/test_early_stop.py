"""A consolidation job that stops when it has learned: the held-out NLL measured every `eval_every` steps, the
run stopped when it stops gaining (`patience`, `min_gain`) or the job passes `max_seconds`, the best measurement's
weights kept (the moving average of the steps' weights, `average`); each held-out figure measured once; the job's
metrics say how it stopped."""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from logmem.memory import ConfigError, VectorMemory
from logmem.model import reading
from logmem.model.config import ConsolidationConfig, GeneratorConfig
from logmem.model.consolidate import consolidate
from logmem.model.gate import HeldOutNll
from logmem.model.jobs import run_consolidation
from logmem.model.loading import load_adapter
from logmem.model.modes import prepare_held_out
from logmem.model.pairs import build_pairs
from logmem.model.training import EarlyStop, _Pace, train_adapter

CAPITALS = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Peru", "Lima"),
            ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Chile", "Santiago"), ("Cuba", "Havana"), ("Iran", "Tehran"),
            ("Iraq", "Baghdad"), ("Nepal", "Kathmandu"), ("Ghana", "Accra"), ("Mali", "Bamako"), ("Laos", "Vientiane"),
            ("Fiji", "Suva")]
FAST = dict(lr=1e-2, batch_size=4, holdout=0.25, probe_bound=10.0, min_steps=0)


@pytest.fixture()
def capitals(tmp_path: Path, embedder: Any) -> VectorMemory:
    """16 liked answers that all differ (the job's figures are NLLs, not accuracies)."""
    mem = VectorMemory(tmp_path / "capitals", embedder=embedder)
    mem.ingest([{"id": f"c{i}", "user": f"u{i}", "timestamp": 1_760_000_000 + i,
                 "messages": [{"role": "user", "content": f"What is the capital of {country}?"},
                              {"role": "assistant", "content": capital}],
                 "feedback": [{"turn": 1, "kind": "like"}]} for i, (country, capital) in enumerate(CAPITALS)])
    yield mem
    mem.close()


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_early_stop_waits_for_its_patience_and_keeps_the_lowest() -> None:
    layer = torch.nn.Linear(2, 2)
    early = EarlyStop(ConsolidationConfig(patience=3, min_gain=0.01))
    assert early.record(layer, 10, 1.0) is None
    assert early.record(layer, 20, 0.9) is None  # gained 0.1: the patience starts again
    with torch.no_grad():
        layer.weight.add_(1.0)
    kept = layer.weight.detach().clone()
    assert early.record(layer, 30, 0.895) is None  # lower, so kept, but a gain under min_gain: one miss
    assert early.record(layer, 40, 0.95) is None  # two misses: not yet
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert early.record(layer, 50, 0.91) == "patience"  # three in a row
    assert (early.best_step, early.best) == (30, 0.895)
    early.restore(layer)
    assert torch.equal(layer.weight, kept)


def test_a_best_under_the_minimum_gain_has_converged() -> None:
    early = EarlyStop(ConsolidationConfig(patience=5, min_gain=0.01))
    assert early.record(torch.nn.Linear(2, 2), 10, 0.5) is None
    assert early.record(torch.nn.Linear(2, 2), 20, 0.009) == "converged"


def test_patience_zero_never_stops_early() -> None:
    early = EarlyStop(ConsolidationConfig(patience=0))
    layer = torch.nn.Linear(2, 2)
    assert all(early.record(layer, s, 1.0 + s) is None for s in range(1, 20))


def test_the_new_settings_are_checked() -> None:
    for field, value in [("eval_every", -1), ("min_steps", -1), ("patience", -1), ("min_gain", -0.1),
                         ("max_seconds", -1.0)]:
        with pytest.raises(ConfigError, match=f"ConsolidationConfig.{field} must be >= 0"):
            ConsolidationConfig(**{field: value})


def test_a_plateau_stops_the_run_and_the_best_weights_are_saved(capitals: VectorMemory, tiny_lm: Any,
                                                                 tmp_path: Path) -> None:
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    config = ConsolidationConfig(**FAST, epochs=20, eval_every=1, patience=2, min_gain=0.01, with_memory=False)
    train = build_pairs(list(capitals.iter_experiences("default")), tok, None, "default", config)
    figures = iter([3.0, 2.0, 2.5, 2.6, 1.0])  # a held-out curve that bottoms out at step 2 (then rises: a plateau)
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def held_out(m: Any, step: int) -> float:
        seen[step] = _weights(m)
        return next(figures)

    adapter, run = train_adapter(model, tok, train, config, held_out=held_out)
    assert (run.steps, run.stop, run.best_step, run.best_nll) == (4, "patience", 2, 2.0)
    assert run.planned == 20 * 4 and [s for s, _ in run.curve] == [1, 2, 3, 4]
    assert any(not torch.equal(seen[2][n], seen[4][n]) for n in seen[2])  # it did learn after step 2
    adapter.save_pretrained(str(tmp_path / "adapter"))
    saved = _weights(load_adapter(copy.deepcopy(tiny_lm[0]), tmp_path / "adapter"))
    step2 = {n.replace(".default", ""): w for n, w in seen[2].items()}
    assert {n.replace(".default", "") for n in saved} == set(step2)
    assert all(torch.equal(saved[n], step2[n.replace(".default", "")]) for n in saved)


def test_the_run_measures_and_keeps_the_moving_average_of_its_steps(capitals: VectorMemory, tiny_lm: Any) -> None:
    tok = tiny_lm[1]
    plain = ConsolidationConfig(**FAST, epochs=2, eval_every=1, patience=0, with_memory=False, average=0.0)
    train = build_pairs(list(capitals.iter_experiences("default")), tok, None, "default", plain)
    steps: dict[int, dict[str, torch.Tensor]] = {}
    means: dict[int, dict[str, torch.Tensor]] = {}

    def seen(into: dict[int, dict[str, torch.Tensor]]) -> Any:
        def held_out(m: Any, step: int) -> float:
            into[step] = _weights(m)
            return 10.0 - step if step != 5 else 0.5  # step 5 measures best
        return held_out

    train_adapter(copy.deepcopy(tiny_lm[0]), tok, train, plain, held_out=seen(steps))
    averaged, run = train_adapter(copy.deepcopy(tiny_lm[0]), tok, train, replace(plain, average=0.5),
                                  held_out=seen(means))
    assert len(steps) == len(means) == run.steps == 8 and run.best_step == 5
    # the steps' own weights are what they were without the average: the average is measured beside them
    expected = steps[1]
    for step in range(1, 9):
        expected = {n: 0.5 * expected[n] + 0.5 * w for n, w in steps[step].items()} if step > 1 else steps[1]
        assert all(torch.allclose(means[step][n], expected[n], atol=1e-6) for n in expected), step
    assert not all(torch.allclose(means[8][n], steps[8][n]) for n in steps[8])  # it did differ from the step's own
    kept = _weights(averaged)
    assert all(torch.equal(kept[n], means[5][n]) for n in kept)  # the best measured average is what it ends with


def test_measurements_begin_at_min_steps(capitals: VectorMemory, tiny_lm: Any) -> None:
    tok = tiny_lm[1]
    config = ConsolidationConfig(**{**FAST, "min_steps": 5}, epochs=3, eval_every=2, patience=0, with_memory=False)
    train = build_pairs(list(capitals.iter_experiences("default")), tok, None, "default", config)
    _, run = train_adapter(copy.deepcopy(tiny_lm[0]), tok, train, config, held_out=lambda m, step: 1.0 / step)
    assert run.planned == 12 and [s for s, _ in run.curve] == [6, 8, 10, 12]
    # a job planned for fewer steps than min_steps is measured once, after its last
    short = ConsolidationConfig(**{**FAST, "min_steps": 13}, epochs=3, eval_every=2, with_memory=False)
    _, run = train_adapter(copy.deepcopy(tiny_lm[0]), tok, train, short, held_out=lambda m, step: 1.0 / step)
    assert [s for s, _ in run.curve] == [12] and run.best_step == 12


def test_a_cooldown_anneals_the_rate_over_the_end_of_the_run(capitals: VectorMemory, tiny_lm: Any) -> None:
    pace = _Pace()
    assert pace.rate(1.0, 1, 10, 0.0, None, 0.2) == 1.0
    assert pace.rate(1.0, 9, 10, 0.0, None, 0.2) == pytest.approx(1.0)  # 8 of 10 steps done: the cooldown begins
    assert pace.rate(1.0, 10, 10, 0.0, None, 0.2) == pytest.approx(0.5)
    assert pace.rate(1.0, 10, 10, 0.0, None, 0.0) == 1.0  # none: constant
    # by the clock, when nearer its end than by the steps: the span is the bound less the last measurement's time
    pace.measured(5, 10.0)
    now = time.perf_counter()
    assert pace.rate(1.0, 2, 100, now - 90.0, now + 20.0, 0.2) == pytest.approx(0.5, abs=0.01)
    assert pace.rate(1.0, 2, 100, now - 200.0, now + 5.0, 0.2) == 0.0  # past the bound less the measurement
    tok = tiny_lm[1]
    config = ConsolidationConfig(**FAST, epochs=3, eval_every=0, with_memory=False, cooldown=0.5)
    train = build_pairs(list(capitals.iter_experiences("default")), tok, None, "default", config)
    _, run = train_adapter(copy.deepcopy(tiny_lm[0]), tok, train, config)
    assert run.steps == 12 and run.lr_end == pytest.approx(FAST["lr"] / 6)  # (1 - 11/12) / 0.5 of the rate
    _, run = train_adapter(copy.deepcopy(tiny_lm[0]), tok, train, replace(config, cooldown=0.0))
    assert run.lr_end == FAST["lr"] and run.to_json()["lr_end"] == FAST["lr"]
    with pytest.raises(ConfigError, match="cooldown"):
        ConsolidationConfig(cooldown=1.5)


def test_the_wall_time_bound_stops_a_job(capitals: VectorMemory, tiny_lm: Any) -> None:
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    config = ConsolidationConfig(**FAST, epochs=10, max_seconds=0.001, gate_reference="base")
    outcome = consolidate(model, tok, capitals, config=config)
    m = outcome.metrics
    assert (m["steps"], m["stop"]) == (1, "wall_time") and m["steps_planned"] == 30
    assert m["curve"] == [[1, round(m["student_nll"], 5)]]  # measured after the step that passed the bound
    # the adapter covers what its one step taught (a batch of 4); the rest is left to the next job
    assert 1 <= len(outcome.covered) == m["covered"] <= 4 < m["train"]


def test_no_step_starts_that_would_end_past_the_bound(capitals: VectorMemory, tiny_lm: Any) -> None:
    """A step and the measurement after it must end by the deadline: after a measurement of 1 s, a run with 1.5 s
    stops rather than start a second step (it used to run on past its bound, measuring again)."""
    tok = tiny_lm[1]
    config = ConsolidationConfig(**FAST, epochs=10, eval_every=1, patience=0, with_memory=False)
    train = build_pairs(list(capitals.iter_experiences("default")), tok, None, "default", config)

    def slow(m: Any, step: int) -> float:
        time.sleep(1.0)
        return 1.0 / step

    _, run = train_adapter(copy.deepcopy(tiny_lm[0]), tok, train, config, held_out=slow,
                           deadline=time.perf_counter() + 1.5)
    assert (run.steps, run.stop, [s for s, _ in run.curve]) == (1, "wall_time", [1])


def test_the_job_metrics_say_how_it_stopped(capitals: VectorMemory, tiny_lm: Any) -> None:
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    params = dict(FAST, epochs=3, eval_every=2, patience=0)
    status, metrics = run_consolidation(capitals, model, tok, tenant="default", params=params, base_model="tiny")
    assert metrics["steps"] == metrics["steps_planned"] == 9 and metrics["stop"] == "max_steps"
    assert [s for s, _ in metrics["curve"]] == [2, 4, 6, 8, 9]  # every 2 steps and after the last
    assert metrics["student_nll"] == pytest.approx(min(v for _, v in metrics["curve"]), abs=1e-5)
    assert metrics["best_step"] in (2, 4, 6, 8, 9) and metrics["train_seconds"] <= metrics["seconds"]
    (adapter,) = capitals.adapters("default")
    assert {k: adapter.metrics[k] for k in ("steps", "steps_planned", "stop")} == {
        "steps": 9, "steps_planned": 9, "stop": "max_steps"}
    # what was saved is the best measurement: its held-out NLL is the student's figure
    held = [e for e in capitals.iter_experiences("default") if e.id in set(metrics["holdout_ids"])]
    held_out = prepare_held_out(held, tok, capitals, "default", GeneratorConfig(k=8))
    saved = load_adapter(copy.deepcopy(tiny_lm[0]), adapter.path)
    prompts = "with_memory" if metrics["with_memory"] else "bare"
    assert HeldOutNll(held_out, tok)(saved, "saved", prompts) == pytest.approx(
        metrics["student_nll"], abs=1e-4)


def test_each_held_out_figure_is_measured_once(capitals: VectorMemory, tiny_lm: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reading of the held-out prompts, by every path that scores them (the student's choice, the serving
    modes, the gate, the early stop), is counted with the weights that answered it: none repeats."""
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    probe = torch.tensor([[1, 2, 3, 4, 5]])
    calls: list[tuple[float, tuple]] = []
    real = reading.read_held_out

    def counted(m: Any, tokenizer: Any, prompts: Any, responses: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            weights = round(float(m(input_ids=probe).logits.double().sum()), 3)  # which function answered
        calls.append((weights, tuple(tuple(p) for p in prompts)))
        return real(m, tokenizer, prompts, responses, **kwargs)

    monkeypatch.setattr(reading, "read_held_out", counted)
    config = ConsolidationConfig(**FAST, epochs=3, eval_every=2, patience=0)  # the student chosen, served gate
    outcome = consolidate(model, tok, capitals, config=config)
    assert outcome.metrics["serving"]["metric"] == "nll"
    assert len({prompts for _, prompts in calls}) == 2  # bare and with the memory
    # the base model twice (bare and with memory), the student at steps 2, 4, 6, 8, 9, then its other prompts
    assert len(calls) == 2 + 5 + 1
    assert len(set(calls)) == len(calls)
