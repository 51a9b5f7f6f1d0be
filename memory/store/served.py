"""Served answers: the interaction row written when an answer is given, and the feedback events that judge it
later, from any process (each event id counts once)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..errors import NotFoundError
from .engine import StoreBase
from .schema import AnswerRow, ExperienceRow, FeedbackEventRow, FeedbackRow, InteractionRow
from .sql import locked


@dataclass(frozen=True)
class AnswerData:
    """A served answer as read from the store."""

    pk: int  # the interaction row's primary key
    id: str  # the interaction id callers know (the response id)
    tenant: str
    user: str | None
    status: str  # answered (awaits judgement) | experience | merged | filtered
    record: dict[str, Any]  # the native-schema record: request messages, the answer, feedback so far
    adapter: str | None
    served: dict[str, Any]
    answered_at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant, "user": self.user, "status": self.status,
                "messages": self.record["messages"], "feedback": self.record.get("feedback", []),
                "adapter": self.adapter, **self.served, "answered_at": self.answered_at}


class AnswerStore(StoreBase):
    def count_uses(self, tx: Session | None = None, *, tenant: str, ids: list[int]) -> None:
        """One more use of each of the tenant's experiences `ids` (they conditioned an answer)."""
        stmt = (update(ExperienceRow).where(ExperienceRow.tenant == tenant, ExperienceRow.id.in_([int(i) for i in ids]))
                .values(uses=ExperienceRow.uses + 1).execution_options(synchronize_session=False))
        if tx is not None:
            tx.execute(stmt)
            return
        with self.transaction() as own:
            own.execute(stmt)

    def add_answer(self, *, record: dict[str, Any], thread_key: str, adapter: str | None,
                   served: dict[str, Any], used: list[int]) -> int:
        """Write a served answer: its interaction row (status `answered`) and its answer row, and count one use
        of each experience in `used`, in one transaction. Returns the interaction's pk."""
        now = time.time()
        with self.transaction() as tx:
            row = InteractionRow(tenant=record["tenant"], ext_id=record["id"], user=record.get("user"),
                                 session=record.get("session"), timestamp=record.get("timestamp"),
                                 record=json.dumps(record, ensure_ascii=False), status="answered", ingested_at=now)
            tx.add(row)
            tx.flush()
            tx.add(AnswerRow(interaction_id=row.id, thread_key=thread_key, adapter=adapter,
                             served=json.dumps(served, ensure_ascii=False), answered_at=now))
            if used:
                self.count_uses(tx, tenant=record["tenant"], ids=used)
            return row.id

    def get_answer(self, tx: Session | None = None, *, tenant: str, ext_id: str, lock: bool = False) -> AnswerData:
        """The served answer `ext_id` of `tenant` (locked until commit with `lock`).

        Raises:
            NotFoundError: no served answer with that id in this tenant.
        """
        with self._reader(tx) as s:
            pk = s.scalar(select(InteractionRow.id).join(AnswerRow, AnswerRow.interaction_id == InteractionRow.id)
                          .where(InteractionRow.tenant == tenant, InteractionRow.ext_id == ext_id))
            if pk is None:
                raise NotFoundError(f"no answered interaction {ext_id!r}")
            row = locked(s, InteractionRow, pk) if lock else s.get(InteractionRow, pk)
            answer = s.get(AnswerRow, pk)
            assert row is not None and answer is not None
            return AnswerData(row.id, row.ext_id, row.tenant, row.user, row.status, json.loads(row.record),
                              answer.adapter, json.loads(answer.served), answer.answered_at)

    def answer_by_thread(self, *, tenant: str, thread_key: str) -> str | None:
        """The id of the tenant's latest served answer still awaiting judgement whose conversation, with the
        answer, hashes to `thread_key` (the request that continues it quotes that conversation)."""
        with Session(self.engine) as s:
            return s.scalar(select(InteractionRow.ext_id).join(AnswerRow, AnswerRow.interaction_id == InteractionRow.id)
                            .where(InteractionRow.tenant == tenant, AnswerRow.thread_key == thread_key,
                                   InteractionRow.status == "answered")
                            .order_by(InteractionRow.id.desc()).limit(1))

    def add_feedback_event(self, tx: Session, *, interaction_pk: int, event_id: str, kind: str) -> bool:
        """Note event `event_id` on the interaction; False when it was noted before (a retry)."""
        values = dict(interaction_id=interaction_pk, event_id=event_id, kind=kind, received_at=time.time())
        dialect = {"postgresql": postgresql, "sqlite": sqlite}[tx.get_bind().dialect.name]
        result = tx.execute(dialect.insert(FeedbackEventRow).values(**values).on_conflict_do_nothing()
                            .returning(FeedbackEventRow.event_id))
        return result.first() is not None

    def update_record(self, tx: Session, *, interaction_pk: int, record: dict[str, Any],
                      feedback: dict[str, Any] | None = None) -> None:
        """Replace an interaction's record (and add one feedback row, when given)."""
        row = tx.get_one(InteractionRow, interaction_pk)
        row.record = json.dumps(record, ensure_ascii=False)
        if feedback is not None:
            tx.add(FeedbackRow(interaction_id=interaction_pk, turn=feedback["turn"], kind=feedback["kind"],
                               value=feedback.get("value"), text=feedback.get("text")))

    def feedback_counts(self, *, tenant: str | None = None) -> dict[str, int]:
        """Feedback events by kind (of one tenant, or all)."""
        stmt = select(FeedbackEventRow.kind, func.count()).group_by(FeedbackEventRow.kind)
        if tenant is not None:
            stmt = stmt.join(InteractionRow, InteractionRow.id == FeedbackEventRow.interaction_id).where(
                InteractionRow.tenant == tenant)
        with Session(self.engine) as s:
            return {k: int(n) for k, n in s.execute(stmt).all()}

    def answer_counts(self, *, tenant: str) -> tuple[int, int]:
        """(experiences, distinct answers among them) of the tenant: how much its answers repeat."""
        stmt = select(func.count(), func.count(func.distinct(ExperienceRow.response))).where(
            ExperienceRow.tenant == tenant)
        with Session(self.engine) as s:
            total, distinct = s.execute(stmt).one()
        return int(total), int(distinct)

    def experience_page(self, *, tenant: str, sort: str, descending: bool, limit: int,
                        offset: int, contains: str | None = None) -> tuple[int, list[int]]:
        """(total, ids of one page) of the tenant's experiences ordered by `sort` (utility, uses, support, age, id);
        with `contains`, only those whose trigger, response, lesson or rejected answer holds that text (any case)."""
        utility = ExperienceRow.alpha / (ExperienceRow.alpha + ExperienceRow.beta)
        key = {"utility": utility, "uses": ExperienceRow.uses, "support": ExperienceRow.support,
               "age": -ExperienceRow.last_seen_at, "id": ExperienceRow.id}[sort]
        order = key.desc() if descending else key.asc()
        where = [ExperienceRow.tenant == tenant]
        if contains:
            where.append(or_(*(column.icontains(contains, autoescape=True) for column in (
                ExperienceRow.trigger, ExperienceRow.response, ExperienceRow.lesson, ExperienceRow.rejected))))
        with Session(self.engine) as s:
            total = s.scalar(select(func.count()).select_from(ExperienceRow).where(*where))
            ids = list(s.scalars(select(ExperienceRow.id).where(*where)
                                 .order_by(order, ExperienceRow.id).limit(limit).offset(offset)))
        return int(total or 0), ids
