"""The runtime's inspection (the inspector page): what the memory learned, from whom, and what it would put in a
prompt."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from logmem.memory import Hit
from logmem.memory.logs import stored_record
from logmem.memory.outcome import judge
from logmem.memory.store import AdapterData, AnswerData, ExperienceData, inspection

from ..answering import Caller
from .admin import Admin
from .memory_ops import MemoryOps

DAY = 86_400.0


class Inspection(MemoryOps, Admin):
    """Served answers, activity, a text filter over the experiences, an experience's history, a prompt preview,
    the users."""

    def answers_page(self, caller: Caller, *, limit: int = 50, offset: int = 0) -> tuple[int, list[AnswerData]]:
        """(total, one page) of the caller's served answers, newest first, each with its feedback so far."""
        return inspection.answers_page(self.store, tenant=caller.tenant, limit=limit, offset=offset)

    def activity(self, caller: Caller, *, days: int = 30, bins: int = 10, now: float | None = None) -> dict[str, Any]:
        """The caller's last `days` UTC days (oldest first): the day starts (epoch seconds), answers served per day,
        feedback events per day by kind; and a histogram of its experiences' utility over [0, 1] in `bins` bins."""
        now = time.time() if now is None else now
        first = (int(now // DAY) - days + 1) * DAY

        def day(t: float) -> int:
            return min(max(int((t - first) // DAY), 0), days - 1)

        answers = [0] * days
        for t in inspection.answer_times(self.store, tenant=caller.tenant, since=first):
            answers[day(t)] += 1
        feedback: dict[str, list[int]] = {}
        for t, kind in inspection.feedback_events(self.store, tenant=caller.tenant, since=first):
            feedback.setdefault(kind, [0] * days)[day(t)] += 1
        counts, edges = np.histogram(inspection.utilities(self.store, tenant=caller.tenant), bins=bins, range=(0, 1))
        return {"days": [first + i * DAY for i in range(days)], "answers": answers, "feedback": feedback,
                "utility": {"edges": edges.tolist(), "counts": counts.tolist()}}

    def find_experiences(self, caller: Caller, text: str, *, sort: str = "utility", descending: bool = True,
                         limit: int = 50, offset: int = 0) -> tuple[int, list[ExperienceData]]:
        """(total, one page) of the caller's experiences whose text holds `text` (any case), sorted."""
        total, ids = self.store.experience_page(tenant=caller.tenant, sort=sort, descending=descending, limit=limit,
                                                offset=offset, contains=text)
        rows = self.store.get_experiences(tenant=caller.tenant, ids=ids)
        return total, [rows[i] for i in ids if i in rows]

    def experience_history(self, caller: Caller, experience_id: int,
                           ) -> tuple[ExperienceData, list[dict[str, Any]], list[AdapterData]]:
        """One of the caller's experiences, the judged interactions it conditioned (newest first: each with its
        request, answer, feedback, judged outcome and, for a served answer, the experience's score parts), and the
        adapters trained on it. Another tenant's id is a NotFoundError."""
        found = self.experience(caller, experience_id)
        uses = [_use(u, experience_id) for u in inspection.judged_uses(self.store, tenant=caller.tenant,
                                                                         experience_id=experience_id)]
        return found, uses, [a for a in self.adapters(caller) if experience_id in a.covered]

    def preview(self, caller: Caller, text: str) -> tuple[list[Hit], Any, str, int]:
        """What answering `text` (one user message) would put before the model, generating nothing: every hit
        retrieval found (in MMR order), the conditioning that fits the budgets, the exact prompt and its tokens."""
        # in front of an upstream: the same conditioning over the tokenizer alone (no weights are loaded to proxy)
        generator = self.conditioner() if self.upstream is not None else self._model_parts()[0]
        hits, cond, prompt = generator.prompt_for([{"role": "user", "content": text}], tenant=caller.tenant)
        return hits, cond, prompt, len(generator.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def users(self, caller: Caller) -> list[inspection.UserData]:
        """The caller's users, most recently seen first."""
        return inspection.users(self.store, tenant=caller.tenant)


def _use(use: inspection.UseData, experience_id: int) -> dict[str, Any]:
    """A judged interaction that had experience `experience_id` in its prompt, as the inspector shows it: the
    judged turn (a served answer's, else the last answer of a log), its outcome as `judge` rules, the score parts."""
    messages = use.record["messages"]
    turn = int(use.served["turn"]) if use.served else max(
        (i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    interaction = stored_record(use.record)
    outcome = next((o for o in judge(interaction) if o.turn == turn), None) if interaction is not None else None
    parts = next((p for p in (use.served or {}).get("experiences", []) if p.get("id") == experience_id), None)
    return {"id": use.id, "user": use.user, "status": use.status, "served": use.served is not None,
            **turn_view(use.record, turn), "success": outcome.success if outcome else None,
            "explicit": bool(outcome and outcome.explicit), "at": use.at, "judged_at": use.judged_at, "parts": parts}


def turn_view(record: dict[str, Any], turn: int) -> dict[str, Any]:
    """The answer at `turn` of a native-schema record: the user request before it, its text, its feedback."""
    messages = record["messages"]
    inside = 0 <= turn < len(messages)
    return {"request": next((m["content"] for m in reversed(messages[:turn]) if m["role"] == "user"), "")
            if inside else "", "answer": messages[turn]["content"] if inside else "",
            "feedback": [f for f in record.get("feedback", []) if f.get("turn") == turn]}
