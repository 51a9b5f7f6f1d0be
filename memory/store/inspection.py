"""Read-only queries behind the inspector: a tenant's served answers newest first, its feedback and answers over
time, the utility of its experiences, the judged interactions an experience conditioned, and its users. Every
query is scoped to one tenant; none writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .engine import StoreBase
from .schema import AnswerRow, ExperienceRow, FeedbackEventRow, InteractionRow, RetrievalRow
from .served import AnswerData


@dataclass(frozen=True)
class UseData:
    """A logged interaction that had an experience in its prompt and was judged (rated, corrected, followed up,
    or ingested with its feedback)."""

    id: str  # the interaction id callers know
    user: str | None
    status: str
    record: dict[str, Any]  # the native-schema record, feedback included
    served: dict[str, Any] | None  # a served answer's details (its turn, the experiences' score parts); None: a log
    at: float  # when it was answered (a served answer) or logged
    judged_at: float | None  # the latest feedback event on it, if any


@dataclass(frozen=True)
class UserData:
    """A user of a tenant, by what the memory holds of them."""

    user: str
    interactions: int
    experiences: int  # experiences created from their words
    last_seen_at: float  # their latest interaction


def answers_page(store: StoreBase, *, tenant: str, limit: int, offset: int) -> tuple[int, list[AnswerData]]:
    """(total, one page) of the tenant's served answers, newest first."""
    joined = select(InteractionRow, AnswerRow).join(AnswerRow, AnswerRow.interaction_id == InteractionRow.id)
    with Session(store.engine) as s:
        total = s.scalar(select(func.count()).select_from(InteractionRow)
                         .join(AnswerRow, AnswerRow.interaction_id == InteractionRow.id)
                         .where(InteractionRow.tenant == tenant))
        rows = s.execute(joined.where(InteractionRow.tenant == tenant)
                         .order_by(AnswerRow.answered_at.desc(), InteractionRow.id.desc()).limit(limit).offset(offset))
        page = [AnswerData(i.id, i.ext_id, i.tenant, i.user, i.status, json.loads(i.record), a.adapter,
                           json.loads(a.served), a.answered_at) for i, a in rows]
    return int(total or 0), page


def feedback_events(store: StoreBase, *, tenant: str, since: float) -> list[tuple[float, str]]:
    """(received at, kind) of the tenant's feedback events on served answers since `since`, oldest first."""
    with Session(store.engine) as s:
        rows = s.execute(select(FeedbackEventRow.received_at, FeedbackEventRow.kind)
                         .join(InteractionRow, InteractionRow.id == FeedbackEventRow.interaction_id)
                         .where(InteractionRow.tenant == tenant, FeedbackEventRow.received_at >= since)
                         .order_by(FeedbackEventRow.received_at))
        return [(float(t), str(k)) for t, k in rows]


def answer_times(store: StoreBase, *, tenant: str, since: float) -> list[float]:
    """When each of the tenant's answers since `since` was served, oldest first."""
    with Session(store.engine) as s:
        return [float(t) for t in s.scalars(
            select(AnswerRow.answered_at).join(InteractionRow, InteractionRow.id == AnswerRow.interaction_id)
            .where(InteractionRow.tenant == tenant, AnswerRow.answered_at >= since).order_by(AnswerRow.answered_at))]


def utilities(store: StoreBase, *, tenant: str) -> np.ndarray:
    """The utility (posterior mean) of each of the tenant's experiences, float64, shape (n,)."""
    with Session(store.engine) as s:
        rows = s.execute(select(ExperienceRow.alpha, ExperienceRow.beta).where(ExperienceRow.tenant == tenant)).all()
    return np.array([a / (a + b) for a, b in rows], dtype=np.float64)


def judged_uses(store: StoreBase, *, tenant: str, experience_id: int, limit: int = 200) -> list[UseData]:
    """The newest `limit` judged interactions of the tenant that had experience `experience_id` in their prompt
    (a served answer is linked to the experiences it used when it is first judged)."""
    judged = (select(FeedbackEventRow.interaction_id, func.max(FeedbackEventRow.received_at).label("at"))
              .group_by(FeedbackEventRow.interaction_id).subquery())
    stmt = (select(InteractionRow, AnswerRow, judged.c.at)
            .join(RetrievalRow, RetrievalRow.interaction_id == InteractionRow.id)
            .outerjoin(AnswerRow, AnswerRow.interaction_id == InteractionRow.id)
            .outerjoin(judged, judged.c.interaction_id == InteractionRow.id)
            .where(InteractionRow.tenant == tenant, RetrievalRow.experience_id == experience_id)
            .order_by(InteractionRow.id.desc()).limit(limit))
    with Session(store.engine) as s:
        return [UseData(i.ext_id, i.user, i.status, json.loads(i.record), json.loads(a.served) if a else None,
                        a.answered_at if a else float(i.timestamp or i.ingested_at),
                        float(at) if at is not None else None)
                for i, a, at in s.execute(stmt)]


def users(store: StoreBase, *, tenant: str, limit: int = 500) -> list[UserData]:
    """The tenant's users (those named by an interaction or an experience), most recently seen first."""
    with Session(store.engine) as s:
        seen = {str(u): (int(n), float(t)) for u, n, t in s.execute(
            select(InteractionRow.user, func.count(), func.max(InteractionRow.ingested_at))
            .where(InteractionRow.tenant == tenant, InteractionRow.user.is_not(None)).group_by(InteractionRow.user))}
        made = {str(u): int(n) for u, n in s.execute(
            select(ExperienceRow.user, func.count())
            .where(ExperienceRow.tenant == tenant, ExperienceRow.user.is_not(None)).group_by(ExperienceRow.user))}
    found = [UserData(u, seen.get(u, (0, 0.0))[0], made.get(u, 0), seen.get(u, (0, 0.0))[1])
             for u in seen.keys() | made.keys()]
    return sorted(found, key=lambda d: (-d.last_seen_at, d.user))[:limit]
