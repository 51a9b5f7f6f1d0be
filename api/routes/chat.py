"""`/v1/models` and `/v1/chat/completions`: OpenAI's shapes, answered with the caller's memory and adapter."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from ..deps import CallerDep, RuntimeDep
from ..runtime import Answer, Caller, Runtime
from ..schemas import ChatCompletion, ChatRequest, ErrorOut, ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["chat"])
STARTED = int(time.time())


@router.get("/models", response_model=ModelList)
def list_models(runtime: RuntimeDep, caller: CallerDep) -> ModelList:
    """`default` (the base model with the caller's active adapter) and the base model itself."""
    return ModelList(data=[ModelCard(id=name, created=STARTED, owned_by="logmem") for name in runtime.models()])


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={404: {"model": ErrorOut}, 429: {"model": ErrorOut}})
async def chat_completions(body: ChatRequest, request: Request, runtime: RuntimeDep, caller: CallerDep) -> Any:
    """Answer with memory; the response `id` is the interaction id that feedback names later."""
    settings = runtime.settings
    if len(body.messages) > settings.max_messages:
        raise HTTPException(422, f"messages: at most {settings.max_messages} per request")
    max_tokens = body.max_completion_tokens or body.max_tokens or 128
    if max_tokens > settings.max_tokens:
        raise HTTPException(422, f"max_tokens: at most {settings.max_tokens}")
    if body.model not in runtime.models():
        raise HTTPException(404, f"the model {body.model!r} does not exist")
    limit, metrics = request.app.state.generation_limit, request.app.state.metrics
    slot = limit.acquire(caller)
    kwargs: dict[str, Any] = dict(model=body.model, user=body.user, max_tokens=max_tokens, temperature=body.temperature,
                  top_p=body.top_p, stop=body.stop)
    messages = [m.plain() for m in body.messages]
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(runtime, caller, messages, kwargs, include_usage, limit, slot, metrics),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        answer = await run_in_threadpool(lambda: runtime.chat(caller, messages, **kwargs))
    finally:
        limit.release(slot)
    metrics.observe_answer(answer)
    return completion(answer)


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
            "retrieval_ms": reply.retrieval_ms, "model_ms": reply.model_ms}


async def _stream(runtime: Runtime, caller: Caller, messages: list[dict[str, str]], kwargs: dict[str, Any],
                  include_usage: bool, limit: Any, slot: object, metrics: Any) -> AsyncIterator[str]:
    """SSE chunks as the model writes them; the last chunk carries the finish reason (and the `logmem`
    object), then the usage chunk when asked for, then `[DONE]`. The interaction is logged before `[DONE]`."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(runtime.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    done: dict[str, Any] = {}

    stream_id = uuid.uuid4().hex  # the interaction id, known before the first chunk

    def answer() -> None:
        try:
            done["answer"] = runtime.chat(caller, messages, streamer=streamer, interaction_id=stream_id, **kwargs)
        except BaseException as exc:  # surfaced to the client as an error event
            done["error"] = exc
            streamer.end()
        finally:
            limit.release(slot)

    worker = threading.Thread(target=answer, name="logmem-stream", daemon=True)
    worker.start()
    created, sent = int(time.time()), ""
    yield _sse({"id": stream_id, "object": "chat.completion.chunk", "created": created, "model": kwargs["model"],
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    async for piece in iterate_in_threadpool(streamer):
        if piece:
            sent += piece
            yield _sse(_chunk(stream_id, created, kwargs["model"], {"content": piece}))
    await run_in_threadpool(worker.join)
    if "error" in done:
        yield _sse({"error": {"message": str(done["error"]), "type": "server_error"}})
        yield "data: [DONE]\n\n"
        return
    result: Answer = done["answer"]
    metrics.observe_answer(result)
    text = result.reply.text
    if not sent.strip() and text:  # chosen by the vote, not generated: nothing was streamed
        yield _sse(_chunk(stream_id, created, kwargs["model"], {"content": text}))
    final = _chunk(stream_id, created, kwargs["model"], {}, result.finish_reason)
    final["logmem"] = _logmem(result)
    yield _sse(final)
    if include_usage:
        yield _sse({"id": stream_id, "object": "chat.completion.chunk", "created": created,
                    "model": kwargs["model"], "choices": [], "usage": _usage(result)})
    yield "data: [DONE]\n\n"


def _chunk(chunk_id: str, created: int, model: str, delta: dict[str, str],
           finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
