"""Reuse: answer with a trusted experience's own answer, verbatim, where the request is its near paraphrase.

A request is answered with its best hit's answer when that hit leads every hit with another answer by at least
the tenant's calibrated `margin` (of the combined retrieval score), is near enough (`reuse_min_cos`) and its utility
is confirmed (`reuse_min_utility`: a like or a correction, not an unjudged answer). No model reads a prompt.

The margin is calibrated per tenant on held-out experiences (`calibrate`): each one's request searched with the
experience itself left out, as a request whose answer the memory may not hold. Its best remaining hit is the answer
reuse would give: right where that hit's answer is the held-out one's (a fact taught twice), else wrong. The margin is
the smallest at which wrong reuses stay within `reuse_risk` of the held-out requests; the precision of the reuses it
allows is measured on the same slice. A tenant with too few experiences to calibrate on is never answered by reuse.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from logmem.memory import Hit, VectorMemory
from logmem.memory.store import ExperienceData
from tqdm import tqdm

from .config import GeneratorConfig
from .scoring import normalize_answer

logger = logging.getLogger(__name__)
MIN_HELD_OUT = 20  # fewer held-out experiences than this calibrate nothing: reuse stays off for the tenant


@dataclass(frozen=True)
class ReuseRule:
    """A tenant's calibrated reuse rule and what its calibration measured."""

    margin: float  # the best hit must lead every hit with another answer by this much (inf: never reuse)
    held_out: int  # held-out requests it was calibrated on
    reused: int  # ... that the rule answers by reuse
    wrong: int  # ... of which with another answer than the held-out one's
    min_cos: float
    min_utility: float

    @property
    def precision(self) -> float | None:
        """Right reuses over all reuses on the held-out slice (None: it reused none)."""
        return (self.reused - self.wrong) / self.reused if self.reused else None

    def pick(self, hits: Sequence[Hit]) -> Hit | None:
        """The hit whose answer is reused for a request that retrieved `hits`, or None (generate instead)."""
        if not hits or math.isinf(self.margin):
            return None
        best = max(hits, key=lambda h: h.score)
        if best.cos < self.min_cos or best.utility < self.min_utility:
            return None
        return best if lead(best, hits) >= self.margin else None

    def to_json(self) -> dict[str, float | int | None]:
        return {"margin": self.margin, "held_out": self.held_out, "reused": self.reused, "wrong": self.wrong,
                "precision": self.precision}


def lead(best: Hit, hits: Sequence[Hit]) -> float:
    """How far `best` leads the best-scored hit with another answer (inf: every hit gives its answer)."""
    mine = normalize_answer(best.response)
    others = [h.score for h in hits if normalize_answer(h.response) != mine]
    return best.score - max(others) if others else math.inf


def spread(memory: VectorMemory, tenant: str, n: int) -> list[ExperienceData]:
    """Up to `n` of the tenant's experiences, spread evenly over them by id."""
    total, _ = memory.experiences(tenant=tenant, sort="id", limit=1)
    count = min(n, total)
    return [e for j in range(count) for e in memory.experiences(
        tenant=tenant, sort="id", descending=False, limit=1, offset=j * total // count)[1]]


def calibrate(memory: VectorMemory, tenant: str, config: GeneratorConfig) -> ReuseRule:
    """The tenant's `ReuseRule`, its margin calibrated on `reuse_held_out` held-out experiences (module docstring)."""
    held = spread(memory, tenant, config.reuse_held_out)
    # (lead of the best remaining hit, whether its answer is the held-out one's) for each held-out request the rule
    # could reuse on at all (near enough, utility confirmed)
    cases: list[tuple[float, bool]] = []
    for e in tqdm(held, desc=f"calibrating reuse for {tenant}", disable=None):
        hits = [h for h in memory.search(e.trigger, config.k + 1, tenant=tenant) if h.id != e.id][:config.k]
        if not hits:
            continue
        best = max(hits, key=lambda h: h.score)
        if best.cos >= config.reuse_min_cos and best.utility >= config.reuse_min_utility:
            cases.append((lead(best, hits), normalize_answer(best.response) == normalize_answer(e.response)))
    if len(held) < MIN_HELD_OUT:
        rule = ReuseRule(math.inf, len(held), 0, 0, config.reuse_min_cos, config.reuse_min_utility)
    else:
        rule = _smallest_margin(cases, len(held), config)
    logger.info("tenant %r: reuse calibrated on %d held-out experiences: %s", tenant, len(held), rule.to_json())
    return rule


def _smallest_margin(cases: list[tuple[float, bool]], n: int, config: GeneratorConfig) -> ReuseRule:
    """The smallest margin (among the held-out leads, and above them all) whose wrong reuses stay within
    `reuse_risk` of the `n` held-out requests."""
    allowed = math.floor(config.reuse_risk * n)
    finite = sorted({m for m, _ in cases if not math.isinf(m)})
    candidates = [*finite, (finite[-1] if finite else 0.0) + 1e-6]
    for margin in candidates:
        fired = [right for m, right in cases if m >= margin]
        wrong = sum(not r for r in fired)
        if wrong <= allowed:
            return ReuseRule(margin, n, len(fired), wrong, config.reuse_min_cos, config.reuse_min_utility)
    # only leads of inf are left (each with one answer among its hits) and too many of them wrong
    return ReuseRule(math.inf, n, 0, 0, config.reuse_min_cos, config.reuse_min_utility)
