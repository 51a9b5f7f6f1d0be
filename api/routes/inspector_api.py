"""The routes the inspector page needs beyond the rest of the API, each scoped to the caller's tenant like every
/v1 route: served answers newest first, activity over time, a text filter over the experiences, an experience's
history, the prompt a request would get, an answer without memory, the users, a canary's arms over time."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from logmem.memory.vocabulary import SortKey, SortOrder
from starlette.concurrency import run_in_threadpool

from ..answering import Ask
from ..connection import until_gone
from ..deps import CallerDep, RowId, RuntimeDep
from ..inspector_schemas import (
    ActivityOut,
    AnswerPage,
    BaselineIn,
    BaselineOut,
    CanaryTimeline,
    ExperienceHistory,
    PromptOut,
    UserOut,
)
from ..runtime import AnswerData, turn_view
from ..schemas import ErrorOut, ExperiencePage, RequiredText
from .views import adapter_view, experience_view

router = APIRouter(prefix="/v1", tags=["inspector"])


@router.get("/interactions", response_model=AnswerPage)
def list_answers(runtime: RuntimeDep, caller: CallerDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                 offset: Annotated[int, Query(ge=0, le=2**31)] = 0) -> Any:
    """The caller's served answers, newest first, with the feedback each got (judge one through its feedback)."""
    total, page = runtime.answers_page(caller, limit=limit, offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "data": [_answer(a) for a in page]}


@router.get("/memory/activity", response_model=ActivityOut)
def activity(runtime: RuntimeDep, caller: CallerDep, days: Annotated[int, Query(ge=1, le=366)] = 30,
             bins: Annotated[int, Query(ge=1, le=100)] = 10) -> Any:
    """Answers and feedback events per UTC day over the last `days`, and the distribution of utility."""
    return runtime.activity(caller, days=days, bins=bins)


@router.get("/memory/find", response_model=ExperiencePage)
def find(runtime: RuntimeDep, caller: CallerDep, text: Annotated[RequiredText, Query(min_length=1, max_length=1_000)],
         sort: SortKey = "utility", order: SortOrder = "desc",
         limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0, le=2**31)] = 0) -> Any:
    """One page of the caller's experiences whose trigger, response, lesson or rejected answer holds `text`."""
    total, page = runtime.find_experiences(caller, text, sort=sort, descending=order == "desc", limit=limit,
                                           offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "data": [experience_view(e) for e in page]}


@router.get("/memory/experiences/{experience_id}/history", response_model=ExperienceHistory,
            responses={404: {"model": ErrorOut}})
def history(experience_id: RowId, runtime: RuntimeDep, caller: CallerDep) -> Any:
    """An experience, the judged interactions it conditioned (with their outcomes), the adapters trained on it."""
    found, uses, adapters = runtime.experience_history(caller, experience_id)
    return {"experience": experience_view(found), "uses": uses, "adapters": [adapter_view(a) for a in adapters]}


@router.get("/memory/prompt", response_model=PromptOut)
async def prompt(runtime: RuntimeDep, caller: CallerDep,
                 q: Annotated[RequiredText, Query(min_length=1, max_length=20_000)]) -> Any:
    """What answering `q` would put before the model, generating nothing: the hits retrieval found with their
    score parts and MMR rank (and which fit the prompt), and the exact prompt."""
    hits, cond, text, tokens = await run_in_threadpool(runtime.preview, caller, q)
    used = {h.id for h in cond.experiences}
    return {"hits": [{"rank": rank, "in_prompt": h.id in used, "id": h.id, "score": h.score, "sim": h.sim,
                      "util": h.util, "rec": h.rec, "cos": h.cos, "utility": h.utility, "trigger": h.trigger,
                      "response": h.response, "lesson": h.lesson, "support": h.support}
                     for rank, h in enumerate(hits, start=1)],
            "prompt": text, "prompt_tokens": tokens, "memory_tokens": cond.memory_tokens, "lessons": cond.lessons}


@router.post("/memory/baseline", response_model=BaselineOut, responses={429: {"model": ErrorOut}})
async def baseline(body: BaselineIn, request: Request, runtime: RuntimeDep, caller: CallerDep) -> Any:
    """The served model's answer to `q` (with the caller's active adapter) with no memory in its prompt: what the
    memory adds, seen side by side with a chat completion. Nothing is logged. The same answer operation as a chat
    completion (local or in front of an upstream), asked without memory."""
    if body.max_tokens > runtime.settings.max_tokens:
        raise HTTPException(422, f"max_tokens: at most {runtime.settings.max_tokens}")
    ask = Ask([{"role": "user", "content": body.q}], max_tokens=body.max_tokens, use_memory=False)
    with request.app.state.generation_limit.slot(caller):
        answer = await until_gone(request, runtime.backend.complete(caller, ask), ask.cancel)
    reply = answer.reply
    return {"text": reply.text, "adapter": answer.adapter, "completion_tokens": answer.completion_tokens,
            "finish_reason": answer.finish_reason, "prompt": reply.prompt, "model_ms": reply.model_ms}


@router.get("/memory/users", response_model=list[UserOut])
def users(runtime: RuntimeDep, caller: CallerDep) -> Any:
    """The caller's users (named by an interaction or an experience), most recently seen first."""
    return [vars(u) for u in runtime.users(caller)]


@router.get("/canaries/{canary_id}/timeline", response_model=CanaryTimeline, responses={404: {"model": ErrorOut}})
def canary_timeline(canary_id: RowId, runtime: RuntimeDep, caller: CallerDep) -> Any:
    """Both arms' cumulative good-outcome rate over time, one point per rated conversation (the canary's
    Consolidation panel plots them)."""
    return runtime.canary_timeline(caller, canary_id)


def _answer(answer: AnswerData) -> dict[str, Any]:
    return {"id": answer.id, "user": answer.user, "status": answer.status,
            **turn_view(answer.record, int(answer.served["turn"])), "adapter": answer.adapter,
            "experiences": [int(e["id"]) for e in answer.served.get("experiences", [])],
            "chosen_by": answer.served.get("chosen_by"), "answered_at": answer.answered_at}
