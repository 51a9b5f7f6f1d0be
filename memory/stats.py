"""What is in the memory: counts per status, index size, utility distribution, age."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .index import Index

DAY = 86_400.0


@dataclass(frozen=True)
class Stats:
    interactions: int  # interactions read and stored
    experiences: int  # distinct experiences
    merged: int  # supporting duplicates merged into experiences
    conflicts: int  # answers that contradicted a near-duplicate's
    filtered: int  # interactions that taught nothing confident (noise)
    awaiting: int  # served answers no feedback or follow-up has judged yet
    lessons: int  # experiences that carry a correction's lesson (and a rejected answer)
    index: dict[str, Any]  # per tenant: kind, size, bytes
    utility: dict[str, float]  # mean and quartiles of the utility posterior means
    age_days: dict[str, float]  # median and max age of the experiences, by last support
    consolidated_share: float  # experiences already distilled into an adapter
    # per tenant with adapters: the active version (None: the base model), its status, and the stale versions
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _quantiles(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {"mean": 0.0, "p25": 0.0, "p50": 0.0, "p75": 0.0}
    p25, p50, p75 = np.quantile(x, [0.25, 0.5, 0.75])
    return {"mean": float(x.mean()), "p25": float(p25), "p50": float(p50), "p75": float(p75)}


def compute_stats(counts: Mapping[str, Any], indexes: Mapping[str, Index], now: float | None = None) -> Stats:
    """Stats from the store's aggregates (`Store.counts`) and the tenants' indexes."""
    now = time.time() if now is None else now
    by_status = counts["by_status"]
    age = (now - counts["last_seen"]) / DAY
    n_exp = counts["experiences"]
    return Stats(
        interactions=int(sum(by_status.values())),
        experiences=n_exp,
        merged=counts["support"] - n_exp,
        conflicts=counts["conflicts"],
        filtered=int(by_status.get("filtered", 0)),
        awaiting=int(by_status.get("answered", 0)),
        lessons=counts["lessons"],
        index={t: {"kind": ix.kind, "size": len(ix), "bytes": ix.nbytes()} for t, ix in indexes.items()},
        utility=_quantiles(counts["utility"]),
        age_days={"p50": float(np.median(age)) if len(age) else 0.0, "max": float(age.max()) if len(age) else 0.0},
        consolidated_share=counts["consolidated"] / n_exp if n_exp else 0.0,
        adapters=_adapters(counts.get("adapters", [])),
    )


def _adapters(rows: list[tuple[str, str, str, bool]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for tenant, version, status, active in sorted(rows, key=lambda r: (r[0], len(r[1]), r[1])):
        entry = out.setdefault(tenant, {"active": None, "active_status": None, "versions": 0, "stale": []})
        entry["versions"] += 1
        if active:
            entry["active"], entry["active_status"] = version, status
        if status == "stale":
            entry["stale"].append(version)
    return out
