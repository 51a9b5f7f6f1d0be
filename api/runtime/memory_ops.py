"""The runtime's operations on the memory: logs in, feedback, search, stats, serving modes, the experiences,
erasure, and a tenant's export and import, each scoped to the caller's tenant."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from logmem.memory import FeedbackResult, Hit, ImportReport, IngestReport, Rejected, Stats, parse_record
from logmem.memory.errors import LogFormatError
from logmem.memory.store import AnswerData, ExperienceData
from logmem.memory.text import require_text

from ..answering import Caller
from .assembly import Assembly


class MemoryOps(Assembly):
    """Logs in, feedback, search, stats, serving modes, the experiences, erasure, export and import."""

    def ingest(self, records: Iterable[Any], *, tenant: str | None = None, format: str = "auto",
               progress: bool = False, total: int | None = None) -> IngestReport:
        """Store log records (dicts in any supported format) for `tenant` (None: each record's own)."""
        return self.memory.ingest(records, format=format, tenant=tenant, progress=progress, total=total)

    def ingest_file(self, path: str | Path, *, tenant: str | None = None, format: str = "auto",
                    progress: bool = False) -> IngestReport:
        return self.memory.ingest_file(path, format=format, tenant=tenant, progress=progress)

    def ingest_records(self, caller: Caller, records: Sequence[Any], *,
                       format: str = "auto") -> tuple[IngestReport, list[dict[str, Any]]]:
        """Store records sent over the API under the caller's tenant (whatever tenant a record names). Returns the
        report and the rejected records, each with its index and the error that names the field."""
        items: list[Any] = []
        rejected: list[dict[str, Any]] = []
        for i, record in enumerate(records):
            try:
                items.append(parse_record(record, format=format, tenant=caller.tenant))
            except LogFormatError as exc:
                error = LogFormatError(exc.reason, source=f"records[{i}]", field=exc.field)
                items.append(Rejected(error, json.dumps(record, default=str)))
                rejected.append({"index": i, "error": error.describe(), "record": record})
        return self.memory.ingest(items), rejected

    def feedback(self, caller: Caller, interaction_id: str, kind: str, *, value: float | None = None,
                 text: str | None = None, event_id: str | None = None) -> FeedbackResult:
        return self.memory.feedback(interaction_id, kind, tenant=caller.tenant, value=value, text=text,
                                    event_id=event_id)

    def search(self, caller: Caller, text: str, k: int = 5) -> list[Hit]:
        """The caller's best `k` experiences for `text` (cleaned as every request's text is; empty then: refused)."""
        return self.memory.search(require_text(text, field="q"), k, tenant=caller.tenant)

    def stats(self, caller: Caller | None) -> Stats:
        return self.memory.stats(caller.tenant if caller else None)

    def serving_mode(self, caller: Caller) -> Any:
        """How the caller's tenant is answered when a request names no mode, and why (`logmem.model.modes`)."""
        from logmem.model.modes import served_mode

        return served_mode(self.memory, caller.tenant)

    def explain_mode(self, caller: Caller) -> Any:
        """`serving_mode` with each held-out slice its deciding job chose over (its figure per mode, its weight)."""
        from logmem.model.modes import explained_mode

        return explained_mode(self.memory, caller.tenant)

    def pin_mode(self, caller: Caller, mode: str | None) -> Any:
        """Pin the tenant's serving mode (None: unpin, the measured mode serves again); returns the mode now served."""
        self.store.pin_serving_mode(tenant=caller.tenant, mode=mode)
        return self.explain_mode(caller)

    def feedback_counts(self, caller: Caller) -> dict[str, int]:
        return self.store.feedback_counts(tenant=caller.tenant)

    def experiences(self, caller: Caller, *, sort: str = "utility", descending: bool = True, limit: int = 50,
                    offset: int = 0) -> tuple[int, list[ExperienceData]]:
        return self.memory.experiences(tenant=caller.tenant, sort=sort, descending=descending, limit=limit,
                                       offset=offset)

    def experience(self, caller: Caller, experience_id: int) -> ExperienceData:
        return self.memory.experience(experience_id, tenant=caller.tenant)

    def forget(self, caller: Caller | None, *, experience_id: int | None = None, user: str | None = None,
               everything: bool = False) -> dict[str, int]:
        """Erase one experience, a user's data, or (`everything`) the whole tenant: rows, vectors and text. A caller
        of None is the operator, whose erasure of an experience or a user spans every tenant."""
        tenant = caller.tenant if caller is not None else None
        if experience_id is not None:
            if caller is not None:
                self.experience(caller, experience_id)  # another tenant's id is a 404, never a deletion
            return self.memory.forget(id=experience_id, tenant=tenant)
        if user is not None:
            return self.memory.forget(user=user, tenant=tenant)
        if everything and tenant is not None:
            return self.memory.forget(tenant=tenant)
        raise ValueError("forget needs an experience id, a user or everything=True (with a tenant)")

    def interaction(self, caller: Caller, interaction_id: str) -> AnswerData:
        """One of the caller's served answers with its feedback so far (another tenant's: a NotFoundError)."""
        return self.memory.answer(interaction_id, tenant=caller.tenant)

    def export_tenant(self, caller: Caller, path: str | Path) -> dict[str, Any]:
        """Write the caller's tenant whole (rows, vectors, serving mode, adapters) as an archive at `path`; returns
        its manifest."""
        return self.memory.export_tenant(path, tenant=caller.tenant)

    def import_tenant(self, caller: Caller | None, path: str | Path, *, reembed: bool | None = None,
                      progress: bool = False) -> ImportReport:
        """Import the archive at `path` as the caller's tenant; a caller of None is the operator, who imports it as
        the tenant it was exported from. Nothing is written unless the whole archive checks out."""
        return self.memory.import_tenant(path, tenant=caller.tenant if caller is not None else None, reembed=reembed,
                                         progress=progress)
