"""`/v1/memory`: stats, search with score parts, the experiences, erasure."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from logmem.memory.vocabulary import SortKey, SortOrder
from starlette.concurrency import run_in_threadpool

from ..deps import CallerDep, RowId, RuntimeDep
from ..schemas import ErrorOut, ExperienceOut, ExperiencePage, ForgetOut, Identifier, RequiredText, SearchOut
from .views import experience_view

router = APIRouter(prefix="/v1/memory", tags=["memory"])


@router.get("/stats")
def stats(runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """What the caller's memory holds, its feedback by kind, and its serving mode (what answers it when a request
    names no mode, and why, with each held-out slice's figures)."""
    return {**runtime.stats(caller).to_json(), "feedback": runtime.feedback_counts(caller),
            "serving_mode": runtime.explain_mode(caller).to_json()}


@router.get("/search", response_model=SearchOut)
async def search(runtime: RuntimeDep, caller: CallerDep,
                 q: Annotated[RequiredText, Query(min_length=1, max_length=20_000)],
                 k: Annotated[int, Query(ge=1)] = 5, explain: bool = False) -> Any:
    """The best experiences for `q`; with `explain`, each hit's score parts (sim + util + rec, and the cosine)."""
    if k > runtime.settings.max_k:
        raise HTTPException(422, f"k: at most {runtime.settings.max_k}")
    hits = await run_in_threadpool(runtime.search, caller, q, k)
    return {"hits": [{"id": h.id, "score": h.score, "trigger": h.trigger, "response": h.response, "lesson": h.lesson,
                      "rejected": h.rejected, "support": h.support, "utility": h.utility,
                      "parts": {"sim": h.sim, "util": h.util, "rec": h.rec, "cos": h.cos} if explain else None}
                     for h in hits]}


@router.get("/experiences", response_model=ExperiencePage)
def experiences(runtime: RuntimeDep, caller: CallerDep,
                sort: SortKey = "utility",
                order: SortOrder = "desc", limit: Annotated[int, Query(ge=1, le=500)] = 50,
                offset: Annotated[int, Query(ge=0, le=2**31)] = 0) -> Any:
    """One page of the caller's experiences, sorted."""
    total, page = runtime.experiences(caller, sort=sort, descending=order == "desc", limit=limit, offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "data": [experience_view(e) for e in page]}


@router.get("/experiences/{experience_id}", response_model=ExperienceOut, responses={404: {"model": ErrorOut}})
def experience(experience_id: RowId, runtime: RuntimeDep, caller: CallerDep) -> Any:
    return experience_view(runtime.experience(caller, experience_id))


@router.delete("/experiences/{experience_id}", response_model=ForgetOut, responses={404: {"model": ErrorOut}})
async def forgetexperience_view(experience_id: RowId, runtime: RuntimeDep, caller: CallerDep) -> Any:
    """Forget one experience: its row, vector and text, and the interactions it came from."""
    return {"removed": await run_in_threadpool(lambda: runtime.forget(caller, experience_id=experience_id))}


@router.delete("/users/{user}", response_model=ForgetOut)
async def forget_user(user: Annotated[Identifier, Path(min_length=1, max_length=200)], runtime: RuntimeDep,
                      caller: CallerDep) -> Any:
    """Erase a user of the caller's tenant: their interactions, the experiences their words made, their support."""
    return {"removed": await run_in_threadpool(lambda: runtime.forget(caller, user=user))}
