"""A consolidation job's place in its tenant's lineage of adapters: what it trains on from, what is new, what it
replays, and which held-out slices of the earlier adapters it must not forget.

Each promoted adapter is trained on from the tenant's active one (its `parent`) on the experiences no adapter of
the lineage covers yet, plus a bounded, seeded sample of the ones it does cover (replay), so that the served
weights keep every consolidated experience while a job's cost grows with what is new, not with all ever
consolidated. An adapter's own held-out experiences stay out of its descendants' training: they are the
slices on which the forgetting gate compares a new adapter with the active one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from logmem.memory import VectorMemory
from logmem.memory.store import AdapterData, ExperienceData

from .config import ConsolidationConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What one job starts from and teaches."""

    new: list[ExperienceData]  # eligible experiences the lineage neither covers nor holds out
    replay_pool: list[ExperienceData] = field(default_factory=list)  # eligible ones the lineage covers
    parent: AdapterData | None = None  # the adapter the job trains on from (None: a fresh LoRA on the base)
    reference: AdapterData | None = None  # the active adapter, against which the forgetting gate measures
    slices: dict[str, list[ExperienceData]] = field(default_factory=dict)  # lineage adapter -> its holdout here
    restart: str | None = None  # why the job retrains from the base over everything (None: it does not)
    erase: bool = False  # the lineage holds forgotten experiences: once promoted, delete the stale weights


def eligible(memory: VectorMemory, tenant: str, config: ConsolidationConfig) -> list[ExperienceData]:
    """The tenant's experiences whose utility and support pass the thresholds, in id order."""
    return [e for e in memory.iter_experiences(tenant)
            if e.utility >= config.min_utility and e.support >= config.min_support]


def lineage(adapters: Sequence[AdapterData], version: str) -> list[AdapterData]:
    """`version` and the adapters it was trained on from, newest first (its parent, the parent's, ...)."""
    by_version = {a.version: a for a in adapters}
    chain: list[AdapterData] = []
    key: str | None = version
    while key is not None and key in by_version and all(a.version != key for a in chain):
        chain.append(by_version[key])
        key = by_version[key].parent
    if key is not None and key not in by_version:
        logger.warning("adapter %s names a parent %s that is not registered: its lineage ends there",
                       chain[-1].version if chain else version, key)
    return chain


def plan_job(memory: VectorMemory, tenant: str, config: ConsolidationConfig) -> Plan:
    """The job's plan from the tenant's active adapter and its lineage.

    A job retrains from the base over every eligible experience (`Plan.restart`) when asked to (`rebuild`),
    when the active adapter is stale (its weights hold a forgotten experience: training on from it would
    carry that on), or when it is the other kind of student (with or without memory in its prompt).
    """
    chosen = eligible(memory, tenant, config)
    active = memory.active_adapter(tenant)
    restart, erase = None, False
    if config.rebuild:
        restart, erase = "rebuild asked for", True
    elif active is not None and active.status == "stale":
        restart, erase = f"the active adapter {active.version} is stale (it holds forgotten experiences)", True
    elif active is not None and config.with_memory is not None \
            and bool(active.metrics.get("with_memory", False)) != config.with_memory:
        restart = (f"the active adapter {active.version} is a {_kind(not config.with_memory)} student, "
                   f"this job trains a {_kind(config.with_memory)} one")
    if restart is not None or active is None:
        if restart is not None:
            logger.warning("consolidation of tenant %r retrains from the base over all %d experiences: %s",
                           tenant, len(chosen), restart)
        return Plan(new=chosen, restart=restart, erase=erase)
    chain = lineage(memory.adapters(tenant), active.version)
    covered = {i for a in chain for i in a.covered}
    held = {i for a in chain for i in a.holdout}
    slices = {a.version: [e for e in chosen if e.id in set(a.holdout)] for a in chain}
    return Plan(new=[e for e in chosen if e.id not in covered and e.id not in held],
                replay_pool=[e for e in chosen if e.id in covered],
                parent=active if config.start == "active" else None, reference=active,
                slices={v: s for v, s in slices.items() if s})


def _kind(with_memory: bool) -> str:
    return "memory+adapter" if with_memory else "bare"


def replay_size(n_new: int, n_pool: int, config: ConsolidationConfig) -> int:
    """How many covered experiences a job with `n_new` new training experiences replays:
    `min(replay_max, max(replay_min, round(replay * n_new)))`, no more than the pool holds (0 if `replay` is 0)."""
    if config.replay <= 0:
        return 0
    return min(n_pool, config.replay_max, max(config.replay_min, round(config.replay * n_new)))


def replay_sample(pool: Sequence[ExperienceData], n_new: int, config: ConsolidationConfig) -> list[ExperienceData]:
    """A seeded sample of `replay_size` experiences of `pool`, in id order."""
    n = replay_size(n_new, len(pool), config)
    return sorted(random.Random(config.seed).sample(list(pool), n), key=lambda e: e.id)


def slice_sample(slices: dict[str, list[ExperienceData]], config: ConsolidationConfig
                 ) -> dict[str, list[ExperienceData]]:
    """At most `forget_max` held-out experiences over all slices, shared evenly (seeded): the forgetting check's
    cost stays bounded however many jobs the lineage has."""
    if not slices:
        return {}
    each = max(1, config.forget_max // len(slices))
    rng = random.Random(config.seed)
    return {v: sorted(rng.sample(s, min(each, len(s))), key=lambda e: e.id) for v, s in slices.items()}


def forgetting_check(reference: dict[str, float], student: dict[str, float], config: ConsolidationConfig
                     ) -> tuple[bool, str, dict[str, dict[str, float]]]:
    """Whether the student keeps every earlier held-out slice: its response NLL on each stays within
    `reference * (1 + forget_bound) + forget_slack` of the active adapter's. Returns (kept, reason, figures)."""
    figures, worse = {}, []
    for version, ref in reference.items():
        bound = ref * (1.0 + config.forget_bound) + config.forget_slack
        figures[version] = {"reference_nll": ref, "student_nll": student[version], "bound": bound}
        if student[version] > bound:
            worse.append(f"slice of {version}: NLL {ref:.4f} -> {student[version]:.4f} (bound {bound:.4f})")
    if worse:
        return False, "forgets what earlier adapters held: " + "; ".join(worse), figures
    kept = ", ".join(f"{v} {f['reference_nll']:.4f} -> {f['student_nll']:.4f}" for v, f in figures.items())
    return True, f"earlier held-out slices kept ({kept})" if kept else "no earlier held-out slice", figures
