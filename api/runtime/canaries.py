"""The runtime's canaries (`logmem.memory.canaries`): the caller's canaries with each arm's counts and what they decide,
both arms' good-outcome rates over time, and an operator's promote, stop and pin. A caller acts on its own tenant
only, as for its adapters; a promotion is pushed to the `push_to` server as an activation is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from logmem.memory.canaries import Canaries
from logmem.memory.errors import AdapterError, NotFoundError
from logmem.memory.store import CanaryData
from logmem.memory.vocabulary import CANARY_ARMS

from ..answering import Caller
from ..upstream import UpstreamError
from .admin import Admin

if TYPE_CHECKING:
    from ..push import Pushed

TIMELINE_POINTS = 400  # points kept per arm of a timeline: a plot has no use for more (the last is always kept)


@dataclass
class CanaryView:
    """A canary as the operator's surfaces show it: its row, each arm's counts and rate, and its decision."""

    canary: CanaryData
    decision: dict[str, Any] | None  # live: what its outcomes decide now; ended: the decision it ended with (None
    # where an activation, a rollback, an erasure or a newer canary ended it)
    pushed: Pushed | None = None  # a promotion with `push_to`: what that server serves now

    def to_json(self) -> dict[str, Any]:
        c = self.canary
        arms = {arm: {"n": int(c.arms.get(arm, {}).get("n", 0)), "good": float(c.arms.get(arm, {}).get("good", 0.0)),
                      "rate": _rate(c.arms.get(arm, {}))} for arm in CANARY_ARMS}
        return {"id": c.id, "tenant": c.tenant, "version": c.version, "mode": c.mode, "current": c.current,
                "share": c.share, "status": c.status, "pinned": c.pinned, "reason": c.reason,
                "started_at": c.started_at, "decided_at": c.decided_at, "arms": arms, "decision": self.decision,
                "pushed": self.pushed.to_json() if self.pushed is not None else None}


def _rate(counts: dict[str, float]) -> float | None:
    return counts["good"] / counts["n"] if counts.get("n") else None


class CanaryOps(Admin):
    """The tenants' canaries, for the CLI, the HTTP routes, the inspector and /metrics."""

    @property
    def _canaries(self) -> Canaries:
        # over the store alone: the CLI's operator commands hold no memory (`Runtime.over_store`)
        return Canaries(self.store)

    def canaries(self, caller: Caller) -> list[CanaryView]:
        """The caller's canaries, newest first, each with its arms' counts; the live one with what they decide now."""
        return [self._view(c) for c in self.store.canaries(tenant=caller.tenant)]

    def canary(self, caller: Caller) -> CanaryView:
        """The caller's live canary with its counts and decision (NotFoundError: none is live)."""
        live = self.store.live_canary(tenant=caller.tenant)
        if live is None:
            raise NotFoundError(f"tenant {caller.tenant!r} has no live canary")
        return self._view(self.store.get_canary(tenant=caller.tenant, canary_id=live.id))

    def live_canaries(self, tenants: list[str]) -> list[CanaryView]:
        """The live canary of each of `tenants` that has one (the operator's, for /metrics)."""
        found = [self.store.live_canary(tenant=t) for t in tenants]  # (read through the state cache)
        views = [self._view(self.store.get_canary(tenant=c.tenant, canary_id=c.id)) for c in found if c is not None]
        return [v for v in views if v.canary.status == "live"]  # one that ended since the cache read it: not live

    def promote_canary(self, caller: Caller) -> CanaryView:
        """Promote the caller's live canary now: its adapter active, in the mode it answered in; with `push_to`,
        pushed to that server as an activation is. The promotion stands when the push fails (the error says so)."""
        view = self._view(self._canaries.promote(caller.tenant))
        if self.settings.push_to:
            view.pushed = self._push_promoted(caller.tenant, view.canary.version)
        return view

    def stop_canary(self, caller: Caller) -> CanaryView:
        """End the caller's live canary: the current arm answers every conversation again."""
        return self._view(self._canaries.stop(caller.tenant))

    def pin_canary(self, caller: Caller, pinned: bool) -> CanaryView:
        """Hold the caller's live canary at its share with no automatic decision (`pinned` False: release it)."""
        pinned_now = self._canaries.pin(caller.tenant, pinned)
        return self._view(self.store.get_canary(tenant=caller.tenant, canary_id=pinned_now.id))

    def canary_timeline(self, caller: Caller, canary_id: int) -> dict[str, dict[str, list[float]]]:
        """Per arm, its cumulative good-outcome rate after each rated conversation, in the order they were rated:
        {"canary": {"at", "n", "rate"}, "current": {...}} (at most `TIMELINE_POINTS` points an arm, evenly spaced).
        Another tenant's canary is a NotFoundError."""
        series: dict[str, dict[str, list[float]]] = {arm: {"at": [], "n": [], "rate": []} for arm in CANARY_ARMS}
        totals = {arm: [0, 0.0] for arm in CANARY_ARMS}
        for at, arm, outcome in self.store.canary_timeline(tenant=caller.tenant, canary_id=canary_id):
            total = totals[arm]
            total[0] += 1
            total[1] += outcome
            series[arm]["at"].append(at)
            series[arm]["n"].append(total[0])
            series[arm]["rate"].append(total[1] / total[0])
        return {arm: _thinned(points) for arm, points in series.items()}

    def _view(self, canary: CanaryData) -> CanaryView:
        live = canary.status == "live"
        return CanaryView(canary, self._canaries.decision(canary).to_dict() if live else canary.decision)

    def _push_promoted(self, tenant: str, version: str) -> Pushed:
        from .. import push

        url, said = self.settings.push_to, f"the canary {version} of tenant {tenant!r} was promoted"
        try:
            return push.push(self.store, tenant, **self._push_target())
        except UpstreamError as exc:
            raise UpstreamError(f"{said}, but pushing it to {url} failed: {exc}", status=exc.status, kind=exc.kind,
                                code=exc.code, retry_after=exc.retry_after) from None
        except AdapterError as exc:
            raise AdapterError(f"{said}, but it cannot be pushed to {url}: {exc}") from None
        finally:
            self._pushed()


def _thinned(points: dict[str, list[float]]) -> dict[str, list[float]]:
    """At most `TIMELINE_POINTS` of an arm's points, evenly spaced, its last one kept."""
    n = len(points["at"])
    if n <= TIMELINE_POINTS:
        return points
    step = n / TIMELINE_POINTS
    keep = sorted({min(n - 1, math.floor(i * step)) for i in range(TIMELINE_POINTS)} | {n - 1})
    return {name: [values[i] for i in keep] for name, values in points.items()}
