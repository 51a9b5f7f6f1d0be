"""Canaries in SQL: which promoted adapter serves a share of a tenant's conversations, each conversation's rated
outcomes on the arm that answered it, and how the canary ended. Every process and worker reads the same rows, so a
canary survives a restart and its arms' counts add up from every server (memory/canary.py decides from them)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import AdapterError, NotFoundError
from ..vocabulary import CANARY_ARMS, SERVING_MODES
from .engine import StoreBase
from .schema import AdapterRow, CanaryOutcomeRow, CanaryRow
from .sql import plain, rowcount

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanaryData:
    """A canary as read from the store."""

    id: int
    tenant: str
    version: str  # the canary arm's adapter
    mode: str  # the serving mode the canary arm answers in
    current: str | None  # the active adapter when it started
    share: float
    config: dict[str, Any]  # CanaryConfig's fields
    status: str  # live | promoted | rolled_back | stopped
    pinned: bool
    reason: str
    decision: dict[str, Any] | None
    started_at: float
    decided_at: float | None
    arms: dict[str, dict[str, float]] = field(default_factory=dict)  # arm -> {"n", "good"} where read with counts

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def canary_data(row: CanaryRow, arms: dict[str, dict[str, float]] | None = None) -> CanaryData:
    return CanaryData(row.id, row.tenant, row.version, row.mode, row.current, row.share, json.loads(row.config),
                      row.status, bool(row.pinned), row.reason or "",
                      json.loads(row.decision) if row.decision else None, row.started_at, row.decided_at, arms or {})


def end_live_canary(tx: Session, *, tenant: str, status: str, reason: str, unless: str | None = None,
                    only: str | None = None) -> str | None:
    """End the tenant's live canary in `tx` with `status` and `reason` (not where its adapter is `unless`; only where
    it is `only`, when given); returns the version it ended (None: none)."""
    row = tx.scalar(select(CanaryRow).where(CanaryRow.tenant == tenant, CanaryRow.status == "live")
                    .with_for_update())
    if row is None or row.version == unless or (only is not None and row.version != only):
        return None
    row.status, row.reason, row.decided_at = status, reason, time.time()
    logger.warning("the canary %s of tenant %r ended (%s): %s", row.version, tenant, status, reason)
    return row.version


def add_outcome(tx: Session, *, canary_id: int, conversation: str, arm: str, outcome: float) -> None:
    """One more rated outcome in [0, 1] of `conversation` on `arm` of canary `canary_id` (the conversation counts once
    in its arm: its outcomes' mean)."""
    if arm not in CANARY_ARMS:
        raise ValueError(f"a canary arm is one of {', '.join(CANARY_ARMS)}, got {arm!r}")
    y = min(max(float(outcome), 0.0), 1.0)
    dialect = {"postgresql": postgresql, "sqlite": sqlite}[tx.get_bind().dialect.name]
    insert = dialect.insert(CanaryOutcomeRow).values(canary_id=canary_id, conversation=conversation, arm=arm, total=y,
                                                     n=1, first_at=time.time())
    tx.execute(insert.on_conflict_do_update(
        index_elements=[CanaryOutcomeRow.canary_id, CanaryOutcomeRow.conversation],
        set_={"total": CanaryOutcomeRow.total + y, "n": CanaryOutcomeRow.n + 1}))


class CanaryStore(StoreBase):
    _cached: Callable[..., Any]  # the state cache (AdapterStore): the live canary is read on every answer's path

    def start_canary(self, *, tenant: str, version: str, mode: str, share: float, config: dict[str, Any],
                     reason: str) -> CanaryData:
        """Make the tenant's promoted adapter `version` its live canary, answering `share` of its conversations in
        `mode` (a live canary before it ends, replaced).

        Raises:
            NotFoundError: no such adapter in the tenant.
            AdapterError: the adapter is not promoted, or is the active one, or `mode` is not a serving mode.
        """
        if mode not in SERVING_MODES:
            raise AdapterError(f"a serving mode is one of {', '.join(SERVING_MODES)}, got {mode!r}")
        if not 0.0 < share < 1.0:
            raise AdapterError(f"a canary's share is in (0, 1), got {share}")
        for attempt in range(3):  # two starters at once: the one-live index sends one round again
            try:
                with self.transaction() as tx:
                    adapter = tx.get(AdapterRow, version)
                    if adapter is None or adapter.tenant != tenant:
                        raise NotFoundError(f"no adapter {version!r} in tenant {tenant!r}")
                    if adapter.status != "promoted" or adapter.active:
                        raise AdapterError(f"adapter {version} is {'active' if adapter.active else adapter.status}: "
                                           "only a promoted adapter that is not active can be a canary")
                    end_live_canary(tx, tenant=tenant, status="stopped", reason=f"replaced by the canary {version}")
                    tx.flush()
                    current = tx.scalar(select(AdapterRow.version).where(AdapterRow.tenant == tenant,
                                                                         AdapterRow.active.is_(True)))
                    row = CanaryRow(tenant=tenant, version=version, mode=mode, current=current, share=float(share),
                                    config=json.dumps(config, default=plain), status="live", pinned=False,
                                    reason=reason, started_at=time.time())
                    tx.add(row)
                    tx.flush()
                    return canary_data(row)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def live_canary(self, *, tenant: str) -> CanaryData | None:
        """The tenant's live canary (None: none), read on every answer's path (see `state_cache_seconds`)."""
        return self._cached("canary", tenant, lambda: self._live_canary(tenant))

    def _live_canary(self, tenant: str) -> CanaryData | None:
        with Session(self.engine) as s:
            row = s.scalar(select(CanaryRow).where(CanaryRow.tenant == tenant, CanaryRow.status == "live"))
            return canary_data(row) if row is not None else None

    def canaries(self, *, tenant: str, counts: bool = True) -> list[CanaryData]:
        """The tenant's canaries, newest first, each with its arms' counts (`counts`)."""
        with Session(self.engine) as s:
            rows = list(s.scalars(select(CanaryRow).where(CanaryRow.tenant == tenant).order_by(CanaryRow.id.desc())))
            return [canary_data(r, self._arms(s, r.id) if counts else None) for r in rows]

    def get_canary(self, *, tenant: str, canary_id: int) -> CanaryData:
        with Session(self.engine) as s:
            row = s.get(CanaryRow, canary_id)
            if row is None or row.tenant != tenant:
                raise NotFoundError(f"no canary {canary_id} in tenant {tenant!r}")
            return canary_data(row, self._arms(s, row.id))

    @staticmethod
    def _arms(s: Session, canary_id: int) -> dict[str, dict[str, float]]:
        """Per arm: rated conversations (`n`) and the sum of their mean outcomes (`good`)."""
        rows = s.execute(select(CanaryOutcomeRow.arm, func.count(),
                                func.sum(CanaryOutcomeRow.total / CanaryOutcomeRow.n))
                         .where(CanaryOutcomeRow.canary_id == canary_id).group_by(CanaryOutcomeRow.arm)).all()
        found = {arm: {"n": float(n), "good": float(good or 0.0)} for arm, n, good in rows}
        return {arm: found.get(arm, {"n": 0.0, "good": 0.0}) for arm in CANARY_ARMS}

    def canary_timeline(self, *, tenant: str, canary_id: int) -> list[tuple[float, str, float]]:
        """(when, arm, mean outcome) of each rated conversation of the canary, in the order their outcomes came."""
        self.get_canary(tenant=tenant, canary_id=canary_id)
        with Session(self.engine) as s:
            rows = s.execute(select(CanaryOutcomeRow.first_at, CanaryOutcomeRow.arm,
                                    CanaryOutcomeRow.total / CanaryOutcomeRow.n)
                             .where(CanaryOutcomeRow.canary_id == canary_id).order_by(CanaryOutcomeRow.first_at))
            return [(float(t), str(a), float(y)) for t, a, y in rows]

    def finish_canary(self, *, canary_id: int, status: str, reason: str,
                      decision: dict[str, Any] | None = None) -> bool:
        """End a live canary with `status`; False when it had ended already (another process decided first)."""
        values: dict[str, Any] = {"status": status, "reason": reason, "decided_at": time.time()}
        if decision is not None:
            values["decision"] = json.dumps(decision, default=plain)
        with self.transaction() as tx:
            done = rowcount(tx.execute(update(CanaryRow).where(CanaryRow.id == canary_id, CanaryRow.status == "live")
                                       .values(**values).execution_options(synchronize_session=False)))
        return done == 1

    def pin_canary(self, *, tenant: str, pinned: bool) -> CanaryData:
        """Hold the tenant's live canary (no automatic decision while pinned), or release it."""
        with self.transaction() as tx:
            row = tx.scalar(select(CanaryRow).where(CanaryRow.tenant == tenant, CanaryRow.status == "live")
                            .with_for_update())
            if row is None:
                raise NotFoundError(f"tenant {tenant!r} has no live canary")
            row.pinned = pinned
            tx.flush()
            return canary_data(row)
