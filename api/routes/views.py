"""The JSON views of the runtime's records that several routes return."""

from __future__ import annotations

from typing import Any

from ..runtime import AdapterData, ExperienceData


def adapter_view(a: AdapterData) -> dict[str, Any]:
    return {"version": a.version, "status": a.status, "active": a.active, "previous": a.previous,
            "method": a.method, "base_model": a.base_model, "metrics": a.metrics, "covered": len(a.covered),
            "created_at": a.created_at, "stale_at": a.stale_at}


def experience_view(e: ExperienceData) -> dict[str, Any]:
    return {"id": e.id, "trigger": e.trigger, "response": e.response, "lesson": e.lesson, "rejected": e.rejected,
            "utility": e.utility, "support": e.support, "uses": e.uses, "created_at": e.created_at,
            "last_seen_at": e.last_seen_at, "consolidated_in": e.consolidated_in}
