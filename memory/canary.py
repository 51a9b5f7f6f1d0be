"""Canary adapters: which arm answers a conversation, and when the users' outcomes decide between the arms.

A promoted adapter may first serve a share of a tenant's conversations (the canary arm) while the rest keep the
current adapter and serving mode (the current arm). Every rated answer is an outcome y in [0, 1] for the arm that
answered it (1 good, 0 bad; a graded signal such as a rating may be fractional), and an arm's good-outcome rate is
the mean of its outcomes. The decision is a sequential test that may be looked at after every outcome:

- **Promote** when the e-value against "the canary is not better" (p_canary <= p_current) reaches 1/alpha_promote.
- **Roll back** when the e-value against "the canary is not worse" (p_canary >= p_current) reaches 1/alpha_rollback.
- **No decision** once the canary arm has `budget` rated outcomes without either: the canary ends, the current arm
  keeps serving, and the adapter stays as the offline gate left it (promoted, not active).
- Otherwise **continue** (also while either arm has fewer than `min_outcomes`).

The e-value (universal inference, Wasserman, Ramdas & Balakrishnan 2020, PNAS 117(29)) is the Beta-Binomial marginal
likelihood of both arms' outcomes (independent Beta(prior, prior) mixtures over each arm's rate: Robbins' method of
mixtures) divided by the Bernoulli likelihood maximised over the null (the constrained maximum of two binomials under
an order restriction is the two separate rates when they already satisfy it, else the pooled rate). For any rates in
the null, that ratio is at most the mixture likelihood ratio against the true rates, a nonnegative martingale of mean
one, so Ville's inequality bounds the chance that it ever reaches 1/alpha, at any of the unbounded number of looks, by
alpha (Howard, Ramdas, McAuliffe & Sekhon 2021, Ann. Statist., for time-uniform bounds of this kind; Johari, Pekelis &
Walsh 2017, KDD, for why a fixed-sample test peeked at after each outcome does not hold its level). Hence:

- P(promote | the canary is no better) <= alpha_promote, P(roll back | the canary is no worse) <= alpha_rollback,
  whatever the rates, the share, the budget and the minimum sample, however often `decide` is called.
- Fractional outcomes keep the guarantee: for y in [0, 1] with mean p, E[a^y b^(1-y)] <= p*a + (1-p)*b (the function
  is convex in y, and Bernoulli(p) is the largest distribution on [0, 1] with mean p in the convex order), so each
  factor of the likelihood ratio is a supermartingale step.
- Outcomes must be independent given their arm. Two ratings in one conversation are not (the same user, the same
  topic): count one outcome per conversation (e.g. the mean of its rated answers) where conversations are long.

The power (how soon a real difference decides) comes from the budget and the minimum sample, measured by
`benchmarks/bench_canary.py`. Arms are assigned by a hash of the conversation id (`assign_arm`), salted by the canary's
version, so a conversation stays on one arm and each canary draws its own conversations.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import numba
import numpy as np

from .errors import ConfigError
from .vocabulary import CANARY_VERDICTS, CanaryArm, CanaryVerdict


@dataclass(frozen=True)
class CanaryConfig:
    """The canary's share of traffic and the decision rule's error rates and sample bounds."""

    share: float = 0.1  # the share of conversations the canary answers, in (0, 1)
    alpha_promote: float = 0.05  # the bound on promoting a canary that is no better, under continuous monitoring
    alpha_rollback: float = 0.05  # the bound on rolling back a canary that is no worse
    min_outcomes: int = 50  # rated outcomes each arm needs before any decision (early outcomes carry novelty effects)
    budget: int = 1500  # rated canary outcomes after which, undecided, it ends and the current arm keeps serving
    prior: float = 1.0  # Beta(prior, prior) mixture over each arm's rate (1: uniform)

    def __post_init__(self) -> None:
        if not 0.0 < self.share < 1.0:
            raise ConfigError(f"share must be in (0, 1), got {self.share}")
        for name in ("alpha_promote", "alpha_rollback"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.min_outcomes < 1:
            raise ConfigError(f"min_outcomes must be >= 1, got {self.min_outcomes}")
        if self.budget < self.min_outcomes:
            raise ConfigError(f"budget must be >= min_outcomes ({self.min_outcomes}), got {self.budget}")
        if not self.prior > 0.0:
            raise ConfigError(f"prior must be > 0, got {self.prior}")

    @property
    def promote_threshold(self) -> float:
        """The e-value that promotes: 1 / alpha_promote."""
        return 1.0 / self.alpha_promote

    @property
    def rollback_threshold(self) -> float:
        """The e-value that rolls back: 1 / alpha_rollback."""
        return 1.0 / self.alpha_rollback


@dataclass(frozen=True)
class ArmCounts:
    """One arm's rated outcomes: their sum (`good`) and their number (`n`); good <= n, both >= 0."""

    good: float = 0.0
    n: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.good <= self.n + 1e-9):  # sums of fractional outcomes may round past n by an ulp
            raise ConfigError(f"arm counts need 0 <= good <= n, got good={self.good}, n={self.n}")

    def add(self, outcome: float) -> ArmCounts:
        """These counts with one more rated outcome in [0, 1] (1 good, 0 bad)."""
        if not 0.0 <= outcome <= 1.0:
            raise ConfigError(f"an outcome must be in [0, 1], got {outcome}")
        return ArmCounts(self.good + outcome, self.n + 1.0)

    @property
    def rate(self) -> float:
        """The arm's good-outcome rate (NaN before any outcome)."""
        return self.good / self.n if self.n else math.nan


@dataclass(frozen=True)
class Decision:
    """What the arms' outcomes decide now, with the figures that say why (JSON-ready through `to_dict`)."""

    verdict: CanaryVerdict
    reason: str
    canary: ArmCounts
    current: ArmCounts
    e_better: float  # the e-value against "the canary is not better"
    e_worse: float  # the e-value against "the canary is not worse"
    promote_threshold: float
    rollback_threshold: float
    min_outcomes: int
    budget: int
    requests: int | None = None  # tenant requests seen on both arms, rated or not, where the caller counts them

    @property
    def rated(self) -> int:
        """Rated requests seen on both arms."""
        return int(self.canary.n + self.current.n)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rated": self.rated, "canary_rate": _finite(self.canary.rate),
                "current_rate": _finite(self.current.rate)}


def conversation_point(conversation: str, salt: str = "") -> float:
    """A conversation's fixed point in [0, 1): the top 53 bits of sha256(salt, conversation)."""
    digest = hashlib.sha256(f"{salt}\x00{conversation}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def assign_arm(conversation: str, share: float, salt: str = "") -> CanaryArm:
    """The arm that answers `conversation`: the canary where its point falls under `share`. The same conversation
    always gets the same arm; raising the share keeps every canary conversation on the canary. Salt with the canary's
    version so that each canary draws its own conversations."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"share must be in [0, 1], got {share}")
    return "canary" if conversation_point(conversation, salt) < share else "current"


@numba.njit(cache=True)
def _log_beta(a: float, b: float) -> float:
    """log B(a, b) = lgamma(a) + lgamma(b) - lgamma(a + b)."""
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


@numba.njit(cache=True)
def _log_lik(good: float, n: float, p: float) -> float:
    """good*log(p) + (n - good)*log(1 - p), with 0*log(0) = 0."""
    out = 0.0
    if good > 0.0:
        out += good * math.log(p)
    if n - good > 0.0:
        out += (n - good) * math.log(1.0 - p)
    return out


@numba.njit(cache=True)
def _log_e(gc: float, nc: float, ga: float, na: float, prior: float) -> tuple[float, float]:
    """(log e-value against p_c <= p_a, log e-value against p_c >= p_a): log of the Beta(prior, prior) marginal
    likelihood of both arms minus the log likelihood maximised under each null."""
    mixture = (_log_beta(prior + gc, prior + nc - gc) + _log_beta(prior + ga, prior + na - ga)
               - 2.0 * _log_beta(prior, prior))
    pooled_rate = (gc + ga) / (nc + na) if nc + na > 0.0 else 0.5
    rc = gc / nc if nc > 0.0 else pooled_rate
    ra = ga / na if na > 0.0 else pooled_rate
    apart = _log_lik(gc, nc, rc) + _log_lik(ga, na, ra)
    pooled = _log_lik(gc, nc, pooled_rate) + _log_lik(ga, na, pooled_rate)
    better = mixture - (apart if rc <= ra else pooled)
    worse = mixture - (apart if rc >= ra else pooled)
    return better, worse


@numba.njit(cache=True)
def _log_e_path(canary: np.ndarray, outcome: np.ndarray, prior: float) -> tuple[np.ndarray, ...]:
    """Each arm's running counts and both log e-values after each outcome of a stream: `canary` (n,) bool says which
    arm answered, `outcome` (n,) float64 in [0, 1]. Returns (gc, nc, ga, na, log_e_better, log_e_worse), each (n,)."""
    n = canary.shape[0]
    gc, nc, ga, na = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    better, worse = np.empty(n), np.empty(n)
    g_c = n_c = g_a = n_a = 0.0
    for i in range(n):
        if canary[i]:
            g_c += outcome[i]
            n_c += 1.0
        else:
            g_a += outcome[i]
            n_a += 1.0
        gc[i], nc[i], ga[i], na[i] = g_c, n_c, g_a, n_a
        better[i], worse[i] = _log_e(g_c, n_c, g_a, n_a, prior)
    return gc, nc, ga, na, better, worse


def log_evidence(canary: ArmCounts, current: ArmCounts, prior: float = 1.0) -> tuple[float, float]:
    """The log e-values (against "the canary is not better", against "the canary is not worse") of these counts."""
    better, worse = _log_e(float(canary.good), float(canary.n), float(current.good), float(current.n), float(prior))
    return float(better), float(worse)


def _verdict_codes(better: np.ndarray, worse: np.ndarray, nc: np.ndarray, na: np.ndarray,
                   config: CanaryConfig) -> np.ndarray:
    """The rule, over arrays of states: the index in CANARY_VERDICTS of each state's verdict. A crossing decides
    before the budget does; nothing decides before both arms have `min_outcomes`."""
    ready = (nc >= config.min_outcomes) & (na >= config.min_outcomes)
    promote = ready & (better >= math.log(config.promote_threshold))
    rollback = ready & ~promote & (worse >= math.log(config.rollback_threshold))
    spent = ~promote & ~rollback & (nc >= config.budget)
    codes = np.zeros(np.shape(better), dtype=np.int64)
    codes[promote] = CANARY_VERDICTS.index("promote")
    codes[rollback] = CANARY_VERDICTS.index("rollback")
    codes[spent] = CANARY_VERDICTS.index("no_decision")
    return codes


def _reason(verdict: str, canary: ArmCounts, current: ArmCounts, e_better: float, e_worse: float,
            config: CanaryConfig) -> str:
    rates = f"good-outcome rate {canary.rate:.3f} on {canary.n:.0f} canary outcomes, {current.rate:.3f} on " \
            f"{current.n:.0f} current ones"
    if verdict == "promote":
        return (f"the canary beats the current arm: {rates}; e-value {e_better:.1f} >= {config.promote_threshold:g} "
                f"(a canary no better is promoted with probability <= {config.alpha_promote:g})")
    if verdict == "rollback":
        return (f"the canary is worse than the current arm: {rates}; e-value {e_worse:.1f} >= "
                f"{config.rollback_threshold:g} (a canary no worse is rolled back with probability <= "
                f"{config.alpha_rollback:g})")
    if verdict == "no_decision":
        return (f"no decision after the budget of {config.budget} rated canary outcomes: the current arm keeps "
                f"serving, and the adapter stays as the offline gate left it, promoted but not active ({rates}; "
                f"e-values {e_better:.2f} better, {e_worse:.2f} worse)")
    if min(canary.n, current.n) < config.min_outcomes:
        return (f"waiting for {config.min_outcomes} rated outcomes on each arm: the canary has {canary.n:.0f}, the "
                f"current arm {current.n:.0f}")
    return (f"no arm ahead yet: {rates}; e-values {e_better:.2f} better, {e_worse:.2f} worse, under "
            f"{config.promote_threshold:g} and {config.rollback_threshold:g}; {canary.n:.0f} of {config.budget} canary "
            "outcomes")


def _decision(code: int, canary: ArmCounts, current: ArmCounts, log_better: float, log_worse: float,
              config: CanaryConfig, requests: int | None = None) -> Decision:
    verdict: CanaryVerdict = CANARY_VERDICTS[code]  # type: ignore[assignment]
    e_better, e_worse = math.exp(min(log_better, 700.0)), math.exp(min(log_worse, 700.0))
    return Decision(verdict=verdict, reason=_reason(verdict, canary, current, e_better, e_worse, config),
                    canary=canary, current=current, e_better=e_better, e_worse=e_worse,
                    promote_threshold=config.promote_threshold, rollback_threshold=config.rollback_threshold,
                    min_outcomes=config.min_outcomes, budget=config.budget, requests=requests)


def decide(canary: ArmCounts, current: ArmCounts, config: CanaryConfig = CanaryConfig(),
           requests: int | None = None) -> Decision:
    """What the outcomes so far decide: promote, roll back, no decision (the budget spent) or continue. Call it after
    every outcome if you like: the error bounds hold under continuous monitoring. `requests` (the tenant's requests
    on both arms, rated or not) is only recorded."""
    better, worse = log_evidence(canary, current, config.prior)
    code = int(_verdict_codes(np.array([better]), np.array([worse]), np.array([canary.n]), np.array([current.n]),
                              config)[0])
    return _decision(code, canary, current, better, worse, config, requests)


def first_decision(canary: np.ndarray, outcome: np.ndarray, config: CanaryConfig = CanaryConfig()) -> Decision:
    """`decide` after each outcome of a stream, stopped at the first verdict other than "continue" (the last state's
    "continue" if none comes). `canary` (n,) bool: the canary answered; `outcome` (n,) float in [0, 1]. The same rule
    as `decide`, run over a whole stream at once (what a simulation needs)."""
    canary = np.asarray(canary, dtype=np.bool_)
    outcome = np.asarray(outcome, dtype=np.float64)
    if canary.shape != outcome.shape or canary.ndim != 1:
        raise ConfigError(f"canary and outcome must be two (n,) arrays, got {canary.shape} and {outcome.shape}")
    if outcome.size and not ((outcome >= 0.0) & (outcome <= 1.0)).all():
        raise ConfigError("every outcome must be in [0, 1]")
    if not outcome.size:
        return decide(ArmCounts(), ArmCounts(), config)
    gc, nc, ga, na, better, worse = _log_e_path(canary, outcome, float(config.prior))
    codes = _verdict_codes(better, worse, nc, na, config)
    decided = np.flatnonzero(codes)
    i = int(decided[0]) if decided.size else outcome.size - 1
    return _decision(int(codes[i]), ArmCounts(float(gc[i]), float(nc[i])), ArmCounts(float(ga[i]), float(na[i])),
                     float(better[i]), float(worse[i]), config)


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x
