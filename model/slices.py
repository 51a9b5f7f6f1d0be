"""The serving choice over every live held-out slice of a tenant's lineage, not the newest alone.

A job measures the serving modes on its own held-out slice (`ServingGate`, model/gate.py). A tenant whose logs
drift has older topics too: each earlier adapter of the active one's lineage held out a slice of its job's
experiences (`AdapterData.holdout`), which no later job trains on. The choice measures every candidate mode on each
of those still alive (an erased experience drops out of its slice; a slice left empty drops out of the choice) and
combines the figures by each slice's share of the tenant's recent traffic (`traffic_weights`).

A job may not lower any earlier slice's served figure by more than `serve_bound` (relative, as the forgetting check
bounds NLL) unless the tenant's combined figure rises: a mode that would is refused (`decide`). When no mode the
promoted adapter offers is allowed, the job is refused as the forgetting check refuses it: the served figures of
the older topics are what the tenant had, and a job on a new topic may not take them away.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from logmem.memory import VectorMemory
from logmem.memory.store import AdapterData, ExperienceData
from logmem.memory.vocabulary import ADAPTER_MODES, MEMORY_MODES, NEW_SLICE

from .config import ConsolidationConfig, GeneratorConfig
from .lineage import slice_sample
from .modes import beats, best_mode, measure, prepare_held_out

logger = logging.getLogger(__name__)
__all__ = ["SliceFigures", "choose_serving", "decide", "measure_slice", "nearest_slice",
           "recent_traffic", "traffic_weights", "worse"]


@dataclass
class SliceFigures:
    """One held-out slice's figures: `figures[who][mode]`, `who` naming the weights ("base", "active", "student")."""

    name: str  # the adapter whose job held it out (NEW_SLICE: this job's own)
    size: int  # its live held-out experiences
    measured: int  # how many of them were measured (earlier slices: a seeded sample, as the forgetting check's)
    weight: float = 0.0  # its share of the tenant's recent traffic
    figures: dict[str, dict[str, float]] = field(default_factory=dict)

    def figure(self, mode: str, who: str) -> float:
        return self.figures[who][mode]


def recent_traffic(experiences: Sequence[ExperienceData], n: int = ConsolidationConfig.serve_traffic
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The tenant's recent traffic: the vectors (float32, (m, d)) of its `n` latest-used experiences and how many
    logged requests each stands for (its support, float64, (m,))."""
    latest = sorted(experiences, key=lambda e: e.last_seen_at, reverse=True)[:n]
    if not latest:
        return np.zeros((0, 0), np.float32), np.zeros(0)
    return (np.stack([e.vector for e in latest]).astype(np.float32),
            np.array([max(e.support, 1) for e in latest], dtype=np.float64))


def traffic_weights(slices: dict[str, np.ndarray], xq: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """Each slice's share of the traffic `xq` (unit vectors, (m, d), each standing for `counts` requests): the
    requests whose nearest held-out experience (cosine) is in the slice, add-one smoothed so that a slice with no
    recent traffic still weighs a little (the refusal rule, not its weight, is what protects it)."""
    names = [n for n, xb in slices.items() if len(xb)]
    if not names:
        return {}
    hits = np.zeros(len(names))
    if len(xq):
        nearest = [names.index(n) for n in nearest_slice(slices, xq)]
        hits = np.bincount(nearest, weights=counts, minlength=len(names)).astype(np.float64)
    shares = (hits + 1.0) / (hits.sum() + len(names))
    return {n: float(s) for n, s in zip(names, shares)}


def nearest_slice(slices: dict[str, np.ndarray], xq: np.ndarray) -> list[str]:
    """For each request of `xq` (unit vectors, (m, d)), the slice holding its nearest held-out experience (cosine):
    the topic it belongs to."""
    names = [n for n, xb in slices.items() if len(xb)]
    xb = np.concatenate([slices[n] for n in names])
    owner = np.concatenate([np.full(len(slices[n]), i) for i, n in enumerate(names)])
    return [names[i] for i in owner[np.argmax(xq @ xb.T, axis=1)]]


def worse(figure: float, reference: float, metric: str, bound: float) -> bool:
    """Whether `figure` is worse than `reference` by more than the fraction `bound` (accuracy falls, NLL rises)."""
    if metric == "accuracy":
        return figure < reference * (1.0 - bound)
    return figure > reference * (1.0 + bound)


def decide(slices: Sequence[SliceFigures], pool: dict[str, str], before: tuple[str, str], metric: str, *,
           bound: float = ConsolidationConfig.serve_bound, margin: float = 0.0) -> dict[str, Any]:
    """The mode to serve among `pool` (mode -> the weights that answer it) over `slices`, with why.

    Each mode's combined figure is its traffic-weighted mean over the slices. A mode is refused when it lowers an
    earlier slice's figure under the served mode `before` ((mode, who)) by more than `bound` and its combined figure
    does not beat the served mode's (`beats`, by `margin`); the best combined figure of the modes left wins (on a
    tie, the cheaper). `allowed` is False when every mode of `pool` is refused (then `mode` is the best combined).
    """
    if not slices or not pool:
        raise ValueError("a serving choice needs at least one slice and one mode")
    total = sum(s.weight for s in slices) or 1.0

    def combined(mode: str, who: str) -> float:
        return sum(s.weight * s.figure(mode, who) for s in slices) / total

    figures = {m: combined(m, who) for m, who in pool.items()}
    served = combined(*before)
    earlier = [s for s in slices if s.name != NEW_SLICE]
    refused: dict[str, str] = {}
    for m, who in pool.items():
        lowered = [f"slice {s.name} {s.figure(*before):.4f} -> {s.figure(m, who):.4f}" for s in earlier
                   if worse(s.figure(m, who), s.figure(*before), metric, bound)]
        if lowered and not beats(figures[m], served, metric, margin):
            refused[m] = (f"lowers {'; '.join(lowered)} (bound {bound:.0%}) and its combined {metric} "
                          f"{figures[m]:.4f} does not beat the served {before[0]}'s {served:.4f}")
    allowed = {m: f for m, f in figures.items() if m not in refused}
    mode = best_mode(allowed or figures, metric)
    weights = ", ".join(f"{s.name} {s.weight / total:.2f}" for s in slices)
    shown = ", ".join(f"{m} {f:.4f}" for m, f in figures.items())
    reason = (f"best combined held-out {metric} over {len(slices)} slice(s) weighted by recent traffic ({weights}): "
              f"{shown}" + "".join(f"; {m} refused: {why}" for m, why in refused.items()))
    if not allowed:
        reason = "every mode refused: " + reason
    per_topic = _per_topic(slices, pool, metric, total)
    if beats(per_topic["combined"], figures[mode], metric, margin):
        reason += (f"; serving each topic its own best mode ({per_topic['routes']}) would give "
                   f"{per_topic['combined']:.4f} (measured, not served: a tenant is answered in one mode)")
    return {"mode": mode, "allowed": bool(allowed), "combined": figures, "served_before": before[0],
            "per_topic": per_topic,
            "served_before_combined": served, "refused": refused, "bound": bound, "reason": reason,
            "slices": [{"name": s.name, "size": s.size, "measured": s.measured, "weight": round(s.weight / total, 4),
                        "figures": {m: s.figure(m, who) for m, who in pool.items()},
                        "served_before": s.figure(*before), "measured_by": s.figures} for s in slices]}


def _per_topic(slices: Sequence[SliceFigures], pool: dict[str, str], metric: str, total: float) -> dict[str, Any]:
    """Each slice served its own best mode of `pool` (a request's nearest slice deciding its mode), and the combined
    figure that would give."""
    routes = {s.name: best_mode({m: s.figure(m, who) for m, who in pool.items()}, metric) for s in slices}
    combined = sum(s.weight * s.figure(routes[s.name], pool[routes[s.name]]) for s in slices) / total
    return {"routes": routes, "combined": combined}


@contextlib.contextmanager
def _weights(adapter: Any, who: str, active_path: str | None) -> Iterator[Any]:
    """`adapter` (the job's peft model, the student its active adapter) answering as `who`: the base model (the
    adapter disabled), the student, or the tenant's active adapter loaded beside it for the measurement."""
    if who == "base":
        with adapter.disable_adapter():
            yield adapter
        return
    if who == "student":
        yield adapter
        return
    student = adapter.active_adapter
    adapter.load_adapter(str(active_path), adapter_name="serving-reference")
    adapter.set_adapter("serving-reference")
    try:
        yield adapter
    finally:
        adapter.set_adapter(student)
        adapter.delete_adapter("serving-reference")


def measure_slice(adapter: Any, tokenizer: Any, memory: VectorMemory, tenant: str, name: str,
                  experiences: Sequence[ExperienceData], size: int, who: dict[str, Sequence[str]], *,
                  active_path: str | None, k: int, max_length: int, progress: bool = False) -> SliceFigures:
    """The figures of an earlier held-out slice (`experiences`, a sample of its `size`): for each of `who`
    (weights -> modes), its modes' figures, measured as the job measures its own (model/modes.py)."""
    config = GeneratorConfig(k=k)
    held = prepare_held_out(experiences, tokenizer, memory, tenant, config, max_length=max_length)
    out = SliceFigures(name, size, len(experiences))
    for w, modes in who.items():
        with _weights(adapter, w, active_path) as model:
            out.figures[w] = measure(model, tokenizer, held, modes, config, progress=progress)
    logger.info("slice %s (%d of %d measured): %s", name, len(experiences), size, out.figures)
    return out


def candidates(metric: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the base model's modes, an adapter's modes) measured under `metric`."""
    memory_modes = tuple(m for m in MEMORY_MODES if metric == "accuracy" or m != "vote")
    return memory_modes, ADAPTER_MODES


def choose_serving(memory: VectorMemory, adapter: Any, tokenizer: Any, tenant: str, serving: dict[str, Any], *,
                   earlier: dict[str, list[ExperienceData]], holdout: Sequence[int], active: AdapterData | None,
                   promoted: bool, config: ConsolidationConfig, progress: bool = False) -> tuple[dict[str, Any], bool]:
    """The job's serving choice over its own slice (`serving`: the gate's figures on it, `holdout` its ids) and the
    live `earlier` slices of the lineage (adapter -> its held-out experiences still in the memory), measured with
    the job's `adapter` (its peft model: the student, the base with it disabled, and the tenant's `active` adapter
    loaded beside it). Returns (the choice, whether the job stays promoted): a promoted student none of whose
    modes is allowed is refused, and the tenant keeps its adapter and a mode it allows."""
    metric = serving["metric"]
    base_modes, adapter_modes = candidates(metric)
    who: dict[str, Sequence[str]] = {"base": base_modes}
    if active is not None:
        who["active"] = adapter_modes
    if promoted:
        who["student"] = adapter_modes
    new = SliceFigures(NEW_SLICE, len(holdout), len(holdout),
                       figures={"base": serving["base"], "active": serving["active"], "student": serving["student"]})
    slices = [new] + [measure_slice(adapter, tokenizer, memory, tenant, version, sample, len(earlier[version]), who,
                                    active_path=active.path if active is not None else None, k=config.teacher_k,
                                    max_length=config.max_length, progress=progress)
                      for version, sample in slice_sample(earlier, config).items()]
    experiences = {e.id: e for e in memory.iter_experiences(tenant)}
    held = {NEW_SLICE: [experiences[i] for i in holdout if i in experiences], **earlier}
    weights = traffic_weights({n: _vectors(s) for n, s in held.items()},
                              *recent_traffic(list(experiences.values()), config.serve_traffic))
    for s in slices:
        s.weight = weights.get(s.name, 0.0)
    before = (serving["served_before"], "active" if serving["served_before"] in ADAPTER_MODES else "base")
    margin = config.accuracy_margin if metric == "accuracy" else config.gate_margin

    def pool(adapter_who: str | None) -> dict[str, str]:
        modes = {m: "base" for m in serving["base"]}
        if adapter_who is not None:
            modes.update({m: adapter_who for m in serving[adapter_who]})
        return modes

    choice = decide(slices, pool("student" if promoted else "active" if active is not None else None), before,
                    metric, bound=config.serve_bound, margin=margin)
    if promoted and not choice["allowed"]:
        logger.warning("tenant %r: the new adapter would lower an earlier slice's served figure: %s", tenant,
                       choice["reason"])
        refused = choice["reason"]
        choice = decide(slices, pool("active" if active is not None else None), before, metric,
                        bound=config.serve_bound, margin=margin)
        choice["refused_adapter"] = refused
        return choice, False
    return choice, promoted


def _vectors(experiences: Sequence[ExperienceData]) -> np.ndarray:
    return np.stack([e.vector for e in experiences]).astype(np.float32) if experiences else np.zeros((0, 0))
