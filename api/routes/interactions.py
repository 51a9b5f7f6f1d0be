"""`/v1/interactions`: log records in, and feedback on served answers by their id."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Request
from logmem.memory.errors import LogFormatError
from logmem.memory.text import clean_json
from starlette.concurrency import run_in_threadpool

from ..deps import CallerDep, RuntimeDep
from ..schemas import ErrorOut, FeedbackIn, FeedbackOut, Identifier, IngestOut, InteractionsIn

router = APIRouter(prefix="/v1/interactions", tags=["interactions"])
InteractionId = Annotated[Identifier, Path(min_length=1, max_length=200)]


@router.post("", response_model=IngestOut)
async def add_interactions(body: InteractionsIn, runtime: RuntimeDep, caller: CallerDep) -> Any:
    """Add log records under the caller's tenant, as `logmem ingest` does: a record that cannot be read is
    reported with its index and field (and returned for repair), and the valid ones are stored all the same."""
    if len(body.records) > runtime.settings.max_batch:
        raise HTTPException(422, f"records: at most {runtime.settings.max_batch} per request")
    report, rejected = await run_in_threadpool(runtime.ingest_records, caller, body.records, format=body.format)
    return {**report.to_json(), "rejected_records": [{**r, "record": _echoed(r["record"])} for r in rejected]}


def _echoed(record: Any) -> Any:
    """A refused record as a JSON response can carry it back (its text cleaned as free text), or None where none
    can (nested too deep, NaN): its error says why."""
    try:
        return clean_json(record)
    except LogFormatError:
        return None


@router.get("/{interaction_id}", responses={404: {"model": ErrorOut}})
def get_interaction(interaction_id: InteractionId, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """A served answer: its request, answer, the experiences it used, its feedback so far."""
    return runtime.interaction(caller, interaction_id).to_json()


@router.post("/{interaction_id}/feedback", response_model=FeedbackOut, responses={404: {"model": ErrorOut}})
async def add_feedback(interaction_id: InteractionId, body: FeedbackIn, request: Request, runtime: RuntimeDep,
                       caller: CallerDep,
                       idempotency_key: Annotated[Identifier | None, Header(max_length=200)] = None) -> Any:
    """Judge a served answer, from any worker, any time later; each event id counts once."""
    result = await run_in_threadpool(runtime.feedback, caller, interaction_id, body.kind, value=body.value,
                                     text=body.text, event_id=body.event_id or idempotency_key or None)
    if not result.duplicate:
        request.app.state.metrics.feedback.labels(body.kind).inc()
    return result.to_json()
