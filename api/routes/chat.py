"""`/v1/models` and `/v1/chat/completions`: OpenAI's shapes over the one answer operation (`api/answering.py`). The
route translates a request into an `Ask`, holds a generation slot while it is answered, watches for the client going
away, and encodes the answer whole or as server-sent events; what answers is the runtime's backend."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from logmem.memory.errors import LogmemError, UnknownModelError
from logmem.memory.vocabulary import ANSWER_TOKENS
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from ..answering import Ask, Started
from ..connection import Streamed, once, until_gone
from ..deps import CallerDep, RuntimeDep
from ..runtime import Answer
from ..schemas import ChatCompletion, ChatRequest, ErrorOut, ModelCard, ModelList
from ..upstream import UpstreamError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["chat"])
STARTED = int(time.time())


@router.get("/models", response_model=ModelList)
async def list_models(runtime: RuntimeDep, caller: CallerDep) -> ModelList:
    """`default` (the base model with the caller's active adapter) and the base model itself (an upstream's, in
    front of one); in local mode also the LoRA adapters loaded by name for the caller's tenant, each with the base as
    its `root` and `parent` (never the folder it was read from: no response carries a server-side path)."""
    backend = runtime.backend
    models = await backend.models(caller)
    return ModelList(data=[ModelCard(id=name, created=STARTED, owned_by="logmem", root=backend.base_model,
                                     parent=parent) for name, parent in models.items()])


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "The completion; with `stream`, server-sent chat.completion.chunk events"},
                        400: {"model": ErrorOut}, 404: {"model": ErrorOut}, 429: {"model": ErrorOut}})
async def chat_completions(body: ChatRequest, request: Request, response: Response, runtime: RuntimeDep,
                           caller: CallerDep) -> Any:
    """Answer with memory; the response `id` is the interaction id that feedback names later."""
    settings = runtime.settings
    if len(body.messages) > settings.max_messages:
        raise HTTPException(422, f"messages: at most {settings.max_messages} per request")
    max_tokens = body.max_completion_tokens or body.max_tokens or min(ANSWER_TOKENS, settings.max_tokens)
    if max_tokens > settings.max_tokens:
        raise HTTPException(422, f"max_tokens: at most {settings.max_tokens}")
    ask = Ask([m.plain() for m in body.messages], model=body.model, user=body.user, max_tokens=max_tokens,
              temperature=body.temperature, top_p=body.top_p, stop=list(body.stop or []))
    if not runtime.prompt_fits(ask.messages):  # before any model work; a short request needs no thread for it
        await run_in_threadpool(runtime.check_prompt, ask.messages)  # (the first request loads the tokenizer)
    backend = runtime.backend
    if ask.model not in await backend.models(caller):
        raise UnknownModelError(f"the model {ask.model!r} does not exist")
    limit, metrics = request.app.state.generation_limit, request.app.state.metrics
    slot = limit.acquire(caller)
    release = once(lambda: limit.release(slot))
    if not body.stream:
        try:
            answer = await until_gone(request, backend.complete(caller, ask), ask.cancel)
        finally:
            release()
        metrics.observe_answer(answer)
        if answer.server_timing:
            response.headers["Server-Timing"] = answer.server_timing
        return completion(answer)
    # started here, not when the response first reads, so that a client gone before then cannot keep the slot: the
    # backend gives it back when its generation ends (the local thread's end, the upstream stream's close)
    items = backend.stream(caller, ask, release)
    try:
        started = await anext(items)
    except BaseException:
        release()
        raise
    assert isinstance(started, Started)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    headers = {"Cache-Control": "no-cache", **({"Server-Timing": started.server_timing} if started.server_timing
                                               else {})}
    return Streamed(_events(ask, items, include_usage, metrics), media_type="text/event-stream", headers=headers,
                    background=BackgroundTask(items.aclose))


def completion(answer: Answer) -> dict[str, Any]:
    reply = answer.reply
    return {"id": reply.interaction_id, "object": "chat.completion", "created": int(time.time()),
            "model": answer.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                         "finish_reason": answer.finish_reason, "logprobs": None}],
            "usage": _usage(answer), "logmem": _logmem(answer)}


def _usage(answer: Answer) -> dict[str, int]:
    prompt = answer.reply.prompt_tokens
    return {"prompt_tokens": prompt, "completion_tokens": answer.completion_tokens,
            "total_tokens": prompt + answer.completion_tokens}


def _logmem(answer: Answer) -> dict[str, Any]:
    reply = answer.reply
    return {"interaction_id": reply.interaction_id, "adapter": answer.adapter,
            "experiences": [h.parts() for h in reply.experiences], "chosen_by": reply.chosen_by,
            "mode": reply.mode, "retrieval_ms": reply.retrieval_ms, "model_ms": reply.model_ms}


async def _events(ask: Ask, items: AsyncGenerator[Started | str | Answer, None], include_usage: bool,
                  metrics: Any) -> AsyncIterator[str]:
    """The answer as server-sent chat.completion.chunk events: the role, the text as it comes, then (once the answer
    is logged) the finish reason with the `logmem` object, the usage when asked for, and `[DONE]`. A failure ends the
    stream with an error event; nothing is logged for it."""
    created, answer = int(time.time()), None
    yield _sse(_chunk(ask.interaction_id, created, ask.model, {"role": "assistant", "content": ""}))
    try:
        async for item in items:
            if isinstance(item, str):
                yield _sse(_chunk(ask.interaction_id, created, ask.model, {"content": item}))
            elif not isinstance(item, Started):
                answer = item
    except Exception as exc:  # the generation's, the upstream's or the log's (one transaction): nothing half-kept
        expected = isinstance(exc, UpstreamError | LogmemError)
        logger.log(logging.WARNING if expected else logging.ERROR, "interaction %s not logged: %s",
                   ask.interaction_id, exc, exc_info=not expected)
        kind, code = (exc.kind, exc.code) if isinstance(exc, UpstreamError) else ("server_error", None)
        yield _sse({"error": {"message": str(exc) if expected else "internal error", "type": kind, "param": None,
                              "code": code}})
        yield "data: [DONE]\n\n"
        return
    assert answer is not None
    metrics.observe_answer(answer)
    final = _chunk(ask.interaction_id, created, ask.model, {}, answer.finish_reason)
    final["logmem"] = _logmem(answer)
    yield _sse(final)
    if include_usage:
        yield _sse({"id": ask.interaction_id, "object": "chat.completion.chunk", "created": created,
                    "model": ask.model, "choices": [], "usage": _usage(answer)})
    yield "data: [DONE]\n\n"


def _chunk(chunk_id: str, created: int, model: str, delta: dict[str, str],
           finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
