"""Canaries at work: a promoted adapter serves a share of its tenant's conversations before it serves all of them,
and the users' outcomes on both arms decide (the rule and its error bounds: `memory/canary.py`; the rows:
`memory/store/canaries.py`).

- A conversation's arm is fixed by a hash of its opening (`conversation_key`) salted by the canary's version.
- Each rated answer (explicit feedback, or the next turn's judgement) adds its outcome to its conversation on the
  arm that answered it, in the transaction that judges it; the decision is taken after each, from SQL, so every
  process and worker counts and decides alike.
- Promoting makes the canary the active adapter with the serving mode its job measured (`promote`: the same step a
  job's promotion takes without a canary); rolling back, no decision within the budget, stopping and an operator's
  activation leave the current arm serving everyone; an erasure that taints the canary's adapter stops it
  (`Store._mark_stale`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from .canary import ArmCounts, CanaryConfig, Decision, assign_arm, decide
from .errors import AdapterError, NotFoundError
from .store import AdapterData, CanaryData, Store
from .vocabulary import ADAPTER_MODES, CanaryArm

logger = logging.getLogger(__name__)

# Undecided at the budget, the canary ends and the current arm keeps serving: the adapter stays what the offline gate
# made it (promoted, not active; an operator may activate it). Promoting it there instead would promote most of the
# slightly worse adapters, whose rollback the budget is too small to prove (benchmarks/results/canary_arms.md).
VERDICT_STATUS = {"promote": "promoted", "rollback": "rolled_back", "no_decision": "undecided"}


def conversation_key(messages: Sequence[dict[str, str]], user: str | None = None) -> str:
    """A conversation's fixed key: its opening (the messages up to and including the first user turn) and its user.
    Every later request of the conversation repeats that opening, so it keeps its key, and its arm."""
    opening: list[list[str]] = []
    for m in messages:
        opening.append([m["role"], m["content"]])
        if m["role"] == "user":
            break
    return hashlib.sha256(json.dumps([user, opening], ensure_ascii=False).encode()).hexdigest()


def served_as(canary: CanaryData, arm: CanaryArm, conversation: str) -> dict[str, Any]:
    """What an answer's log keeps of its arm (`served["canary"]`), for the feedback that rates it later."""
    return {"id": canary.id, "version": canary.version, "arm": arm, "conversation": conversation}


class Canaries:
    """A memory's canaries: start, route, decide, promote, stop, pin."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def start(self, version: str, *, tenant: str, share: float, mode: str | None = None,
              config: CanaryConfig | None = None, reason: str = "") -> CanaryData:
        """Make the promoted adapter `version` the tenant's canary for `share` of its conversations, answering in
        `mode` (default: the mode its job measured best, `metrics.serving.mode`)."""
        adapter = self.store.get_adapter(version=version)
        if adapter.tenant != tenant:
            raise NotFoundError(f"no adapter {version!r} in tenant {tenant!r}")
        mode = mode or _measured(adapter).get("mode") or "memory+adapter"
        if mode not in ADAPTER_MODES:
            raise AdapterError(f"a canary answers with its adapter: its mode is one of {', '.join(ADAPTER_MODES)}, "
                               f"got {mode!r}")
        config = config or CanaryConfig(share=share)
        started = self.store.start_canary(tenant=tenant, version=version, mode=mode, share=share,
                                          config={**asdict(config), "share": share},
                                          reason=reason or f"adapter {version} passed the offline gate")
        logger.info("adapter %s of tenant %r is its canary for %.0f%% of conversations (%s)", version, tenant,
                    100 * share, mode)
        return started

    def live(self, tenant: str) -> CanaryData | None:
        return self.store.live_canary(tenant=tenant)

    def arm(self, tenant: str, messages: Sequence[dict[str, str]],
            user: str | None = None) -> tuple[CanaryData, CanaryArm, str] | None:
        """(the live canary, the arm that answers this conversation, its key), or None without a live canary."""
        canary = self.live(tenant)
        if canary is None:
            return None
        key = conversation_key(messages, user)
        return canary, assign_arm(key, canary.share, salt=canary.version), key

    def decision(self, canary: CanaryData) -> Decision:
        """What its arms' outcomes decide now (`canary` read with its counts)."""
        counts = {arm: ArmCounts(min(c["good"], c["n"]), c["n"]) for arm, c in canary.arms.items()}
        config = CanaryConfig(**{k: v for k, v in canary.config.items() if k in CanaryConfig.__dataclass_fields__})
        return decide(counts["canary"], counts["current"], config)

    def decide(self, tenant: str) -> CanaryData | None:
        """Apply what the live canary's outcomes decide (nothing while it is pinned or undecided); returns the
        canary as it ended, or None where it goes on (or none is live)."""
        live = self.store.live_canary(tenant=tenant)
        if live is None or live.pinned:
            return None
        canary = self.store.get_canary(tenant=tenant, canary_id=live.id)
        found = self.decision(canary)
        if found.verdict == "continue":
            return None
        return self._end(canary, found.verdict, found.reason, found.to_dict())

    def promote(self, tenant: str, *, reason: str = "promoted by an operator") -> CanaryData:
        """Promote the live canary now (an operator's call)."""
        canary = self._live(tenant)
        return self._end(canary, "promote", reason, self.decision(canary).to_dict())

    def stop(self, tenant: str, *, reason: str = "stopped by an operator") -> CanaryData:
        """End the live canary; the current arm serves every conversation again."""
        canary = self._live(tenant)
        return self._end(canary, "stop", reason, self.decision(canary).to_dict())

    def pin(self, tenant: str, pinned: bool = True) -> CanaryData:
        """Hold the live canary at its share with no automatic decision (False: release it)."""
        return self.store.pin_canary(tenant=tenant, pinned=pinned)

    def _live(self, tenant: str) -> CanaryData:
        live = self.store.live_canary(tenant=tenant)
        if live is None:
            raise NotFoundError(f"tenant {tenant!r} has no live canary")
        return self.store.get_canary(tenant=tenant, canary_id=live.id)

    def _end(self, canary: CanaryData, verdict: str, reason: str, decision: dict[str, Any]) -> CanaryData:
        status = VERDICT_STATUS.get(verdict, "stopped")
        if status == "promoted":  # first: a crash before the row is finished leaves it live, to be promoted again
            promote(self.store, canary.tenant, canary.version, mode=canary.mode)
        if self.store.finish_canary(canary_id=canary.id, status=status, reason=reason, decision=decision):
            logger.info("the canary %s of tenant %r: %s (%s)", canary.version, canary.tenant, status, reason)
        return self.store.get_canary(tenant=canary.tenant, canary_id=canary.id)


def promote(store: Store, tenant: str, version: str, *, mode: str | None = None) -> AdapterData:
    """Make the promoted adapter `version` the tenant's active one and serve it as its job measured: the experiences
    it was trained on marked consolidated in it, the serving mode its job chose recorded (`mode` overrides the mode).
    A job's promotion and a canary's take this one step."""
    adapter = store.activate_adapter(tenant=tenant, version=version)
    store.mark_consolidated(tenant=tenant, experience_ids=adapter.covered, version=version)
    serving = _measured(adapter)
    if serving.get("mode"):
        store.record_serving_mode(tenant=tenant, mode=mode or serving["mode"], adapter=version,
                                  metric=serving.get("metric") or "accuracy", figures=serving.get("figures") or {},
                                  reason=serving.get("reason") or "", job_version=version)
    return adapter


def _measured(adapter: AdapterData) -> dict[str, Any]:
    """The serving choice its job recorded in its metrics (`serving`: mode, metric, figures, reason)."""
    serving = (adapter.metrics or {}).get("serving")
    return serving if isinstance(serving, dict) else {}
