"""The canary's decision rule (memory/canary.py): its e-values against an independent oracle, each verdict, the
arm assignment, and the false-promotion bound under continuous monitoring in a seeded simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from logmem.memory.canary import (
    ArmCounts,
    CanaryConfig,
    assign_arm,
    conversation_point,
    decide,
    first_decision,
    log_evidence,
)
from logmem.memory.errors import ConfigError
from logmem.memory.vocabulary import CANARY_ARMS, CANARY_VERDICTS


def oracle_log_e(gc: int, nc: int, ga: int, na: int) -> tuple[float, float]:
    """Uniform-prior marginal likelihood by its closed form (1 / ((n+1) C(n, g)) per arm) over the null's maximum
    found on a grid of (p_c, p_a)."""
    mixture = -math.log((nc + 1) * math.comb(nc, gc)) - math.log((na + 1) * math.comb(na, ga))
    p = np.linspace(1e-6, 1 - 1e-6, 4001)
    lc = gc * np.log(p) + (nc - gc) * np.log1p(-p)
    la = ga * np.log(p) + (na - ga) * np.log1p(-p)
    total = lc[:, None] + la[None, :]  # [i, j]: p_c = p[i], p_a = p[j]
    i, j = np.indices(total.shape)
    return mixture - total[i <= j].max(), mixture - total[i >= j].max()


@pytest.mark.parametrize("counts", [(8, 10, 50, 100), (3, 10, 70, 100), (0, 5, 5, 5), (40, 60, 40, 60),
                                    (120, 150, 600, 1000)])
def test_log_evidence_matches_the_oracle(counts: tuple[int, int, int, int]) -> None:
    gc, nc, ga, na = counts
    better, worse = log_evidence(ArmCounts(gc, nc), ArmCounts(ga, na))
    want_better, want_worse = oracle_log_e(gc, nc, ga, na)
    assert better == pytest.approx(want_better, abs=1e-3)
    assert worse == pytest.approx(want_worse, abs=1e-3)


def test_a_clearly_better_canary_is_promoted() -> None:
    d = decide(ArmCounts(180, 200), ArmCounts(1400, 2000), requests=7300)
    assert d.verdict == "promote" and d.requests == 7300
    assert d.e_better >= d.promote_threshold == 20.0
    assert d.rated == 2200 and "beats" in d.reason


def test_a_clearly_worse_canary_is_rolled_back() -> None:
    d = decide(ArmCounts(100, 200), ArmCounts(1400, 2000))
    assert d.verdict == "rollback"
    assert d.e_worse >= d.rollback_threshold and d.e_better < 1.0


def test_below_the_minimum_sample_it_waits() -> None:
    config = CanaryConfig(min_outcomes=50)
    assert decide(ArmCounts(49, 49), ArmCounts(700, 1000), config).verdict == "continue"
    waiting = decide(ArmCounts(40, 40), ArmCounts(700, 1000), config)
    assert "waiting" in waiting.reason and waiting.e_better >= waiting.promote_threshold  # the evidence alone would do
    assert decide(ArmCounts(50, 50), ArmCounts(700, 1000), config).verdict == "promote"


def test_at_the_budget_without_a_decision_the_gate_stands() -> None:
    config = CanaryConfig(budget=1500)
    assert decide(ArmCounts(1049, 1499), ArmCounts(7000, 10000), config).verdict == "continue"
    d = decide(ArmCounts(1050, 1500), ArmCounts(7000, 10000), config)
    assert d.verdict == "no_decision" and "current arm keeps serving" in d.reason
    assert decide(ArmCounts(1500, 1500), ArmCounts(7000, 10000), config).verdict == "promote"  # evidence first


def test_first_decision_is_decide_at_the_first_verdict() -> None:
    rng = np.random.default_rng(0)
    canary = rng.random(3000) < 0.3
    outcome = (rng.random(3000) < np.where(canary, 0.85, 0.6)).astype(float)
    config = CanaryConfig(min_outcomes=20, budget=800)
    d = first_decision(canary, outcome, config)
    assert d.verdict == "promote"
    k = d.rated
    counts = [ArmCounts(float(outcome[:j][canary[:j]].sum()), float(canary[:j].sum())) for j in (k - 1, k)]
    rest = [ArmCounts(float(outcome[:j][~canary[:j]].sum()), float((~canary[:j]).sum())) for j in (k - 1, k)]
    assert decide(counts[0], rest[0], config).verdict == "continue"
    again = decide(counts[1], rest[1], config)
    assert (again.verdict, again.canary, again.current) == (d.verdict, d.canary, d.current)
    assert again.e_better == pytest.approx(d.e_better)
    json.dumps(d.to_dict())  # the record a job or adapter row would keep


def test_fractional_outcomes_count_as_their_value() -> None:
    arm = ArmCounts().add(1.0).add(0.25).add(0.0)
    assert (arm.good, arm.n) == (1.25, 3.0) and arm.rate == pytest.approx(1.25 / 3)
    with pytest.raises(ConfigError, match="in \\[0, 1\\], got 1.5"):
        arm.add(1.5)


def test_the_assignment_is_stable_and_respects_the_share() -> None:
    ids = [f"conversation-{i}" for i in range(20000)]
    arms = [assign_arm(c, 0.1, salt="v7") for c in ids]
    assert arms == [assign_arm(c, 0.1, salt="v7") for c in ids]
    assert set(arms) <= set(CANARY_ARMS)
    assert arms.count("canary") / len(ids) == pytest.approx(0.1, abs=0.01)
    # raising the share keeps the canary's conversations; another canary (salt) draws other ones
    wider = [assign_arm(c, 0.25, salt="v7") for c in ids]
    assert all(w == "canary" for a, w in zip(arms, wider) if a == "canary")
    assert wider.count("canary") / len(ids) == pytest.approx(0.25, abs=0.015)
    other = [assign_arm(c, 0.1, salt="v8") for c in ids]
    assert sum(a == o == "canary" for a, o in zip(arms, other)) < 0.2 * arms.count("canary")
    points = np.array([conversation_point(c) for c in ids[:5000]])
    assert ((points >= 0) & (points < 1)).all()


def simulate(p_canary: float, p_current: float, config: CanaryConfig, runs: int, seed: int,
             fractional: bool = False) -> dict[str, float]:
    """The share of `runs` streams (each long enough to spend the budget) that ends in each verdict."""
    rng = np.random.default_rng(seed)
    n = int(config.budget / config.share * 1.5) + 100
    verdicts = []
    for _ in range(runs):
        canary = rng.random(n) < config.share
        p = np.where(canary, p_canary, p_current)
        # fractional: outcomes spread over [0, 1] with mean p (Beta(2p, 2(1-p))), as graded signals are
        outcome = rng.beta(2 * p, 2 * (1 - p)) if fractional else (rng.random(n) < p).astype(float)
        verdicts.append(first_decision(canary, outcome, config).verdict)
    return {v: verdicts.count(v) / runs for v in CANARY_VERDICTS}


def naive_peeking_false_promotions(config: CanaryConfig, runs: int, seed: int) -> float:
    """A one-sided z-test at 5% looked at after every outcome (what the e-values replace), on equal arms."""
    rng = np.random.default_rng(seed)
    n = int(config.budget / config.share)
    hits = 0
    for _ in range(runs):
        canary = rng.random(n) < config.share
        y = (rng.random(n) < 0.5).astype(float)
        nc, na = np.cumsum(canary), np.cumsum(~canary)
        gc, ga = np.cumsum(y * canary), np.cumsum(y * ~canary)
        ok = (nc >= config.min_outcomes) & (na >= config.min_outcomes)
        pooled = (gc + ga) / (nc + na)
        se = np.sqrt(np.maximum(pooled * (1 - pooled), 1e-12) * (1 / np.maximum(nc, 1) + 1 / np.maximum(na, 1)))
        z = (gc / np.maximum(nc, 1) - ga / np.maximum(na, 1)) / se
        hits += bool((ok & (z >= 1.645)).any())
    return hits / runs


def test_equal_arms_are_rarely_promoted_under_continuous_monitoring() -> None:
    # Looked at after every outcome from the first one: the setting where peeking inflates a fixed-sample test
    config = CanaryConfig(share=0.5, min_outcomes=1, budget=400)
    assert naive_peeking_false_promotions(config, runs=300, seed=1) > 0.15  # the simulation can see inflation
    rates = simulate(0.5, 0.5, config, runs=300, seed=1)
    assert rates["promote"] <= config.alpha_promote and rates["rollback"] <= config.alpha_rollback
    fractional = simulate(0.6, 0.6, config, runs=300, seed=2, fractional=True)
    assert fractional["promote"] <= config.alpha_promote


def test_a_clearly_better_canary_is_found_and_a_worse_one_is_not_promoted() -> None:
    config = CanaryConfig(share=0.25, min_outcomes=20, budget=400)
    better = simulate(0.85, 0.65, config, runs=100, seed=3)
    assert better["promote"] >= 0.9
    worse = simulate(0.5, 0.65, config, runs=100, seed=4)
    assert worse["promote"] == 0.0 and worse["rollback"] >= 0.9


@pytest.mark.parametrize(("kwargs", "match"), [({"share": 0.0}, "share must be in"),
                                                ({"alpha_promote": 1.0}, "alpha_promote must be in"),
                                                ({"min_outcomes": 0}, "min_outcomes must be >= 1"),
                                                ({"budget": 10, "min_outcomes": 20}, "budget must be >= min_outcomes"),
                                                ({"prior": 0.0}, "prior must be > 0")])
def test_bad_settings_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CanaryConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_counts_and_streams_are_refused() -> None:
    with pytest.raises(ConfigError, match="0 <= good <= n"):
        ArmCounts(5, 4)
    with pytest.raises(ConfigError, match="two \\(n,\\) arrays"):
        first_decision(np.zeros(3, bool), np.zeros(4))
    with pytest.raises(ConfigError, match="share must be in"):
        assign_arm("c", 1.5)
