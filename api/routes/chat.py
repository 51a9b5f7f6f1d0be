"""`/v1/models` and `/v1/chat/completions`: OpenAI's shapes, answered with the caller's memory and adapter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from logmem.memory.errors import GenerationCancelled
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from ..deps import CallerDep, RuntimeDep
from ..runtime import SERVED_MODEL, Answer, Caller, Conditioned, Runtime
from ..schemas import ChatCompletion, ChatRequest, ErrorOut, ModelCard, ModelList
from ..upstream import Upstream, UpstreamError, UpstreamStream, lora_name

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["chat"])
STARTED = int(time.time())
T = TypeVar("T")


@router.get("/models", response_model=ModelList)
async def list_models(runtime: RuntimeDep, caller: CallerDep) -> ModelList:
    """`default` (the base model with the caller's active adapter) and the base model itself (an upstream's, in
    front of one); in local mode also the LoRA adapters loaded by name for the caller's tenant, each with the base as
    its `root` and `parent` (never the folder it was read from: no response carries a server-side path)."""
    if runtime.upstream is not None:
        base = await runtime.upstream.base_model()
        return ModelList(data=[ModelCard(id=name, created=STARTED, owned_by="logmem", root=base)
                               for name in (SERVED_MODEL, base)])
    cards = [ModelCard(id=name, created=STARTED, owned_by="logmem", root=runtime.base_model)
             for name in (SERVED_MODEL, runtime.base_model)]
    cards += [ModelCard(id=name, created=STARTED, owned_by="logmem", root=runtime.base_model, parent=runtime.base_model)
              for name in runtime.loras(caller)]
    return ModelList(data=cards)


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "The completion; with `stream`, server-sent chat.completion.chunk events"},
                        404: {"model": ErrorOut}, 429: {"model": ErrorOut}})
async def chat_completions(body: ChatRequest, request: Request, response: Response, runtime: RuntimeDep,
                           caller: CallerDep) -> Any:
    """Answer with memory; the response `id` is the interaction id that feedback names later."""
    settings = runtime.settings
    if len(body.messages) > settings.max_messages:
        raise HTTPException(422, f"messages: at most {settings.max_messages} per request")
    max_tokens = body.max_completion_tokens or body.max_tokens or min(128, settings.max_tokens)
    if max_tokens > settings.max_tokens:
        raise HTTPException(422, f"max_tokens: at most {settings.max_tokens}")
    messages = [m.plain() for m in body.messages]
    await run_in_threadpool(runtime.check_prompt, messages)  # before any model work (the first loads the tokenizer)
    if runtime.upstream is not None:
        return await proxied(body, request, response, runtime, caller, max_tokens)
    if body.model not in runtime.models(caller):
        raise HTTPException(404, f"the model {body.model!r} does not exist")
    limit, metrics = request.app.state.generation_limit, request.app.state.metrics
    slot = limit.acquire(caller)
    cancel = threading.Event()  # set when the client goes away: the generation stops at its next token
    kwargs: dict[str, Any] = dict(model=body.model, user=body.user, max_tokens=max_tokens, temperature=body.temperature,
                                  top_p=body.top_p, stop=body.stop, cancel=cancel)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _stream(runtime, caller, messages, kwargs, include_usage, limit, slot, metrics)
        # the first event starts the answering thread, which gives the slot back at its end: started here, not when
        # the response first reads, so that a client gone before then cannot keep the slot for ever
        try:
            first = await anext(events)
        except BaseException:  # no thread started (the model failed to load, say): nothing else gives it back
            limit.release(slot)
            raise
        return StreamingResponse(_after(first, events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    try:
        answer = await until_gone(request, run_in_threadpool(lambda: runtime.chat(caller, messages, **kwargs)), cancel)
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
            "mode": reply.mode, "retrieval_ms": reply.retrieval_ms, "model_ms": reply.model_ms}


async def _stream(runtime: Runtime, caller: Caller, messages: list[dict[str, str]], kwargs: dict[str, Any],
                  include_usage: bool, limit: Any, slot: object, metrics: Any) -> AsyncIterator[str]:
    """SSE chunks as the model writes them; the last chunk carries the finish reason (and the `logmem`
    object), then the usage chunk when asked for, then `[DONE]`. The interaction is logged before `[DONE]`."""
    from transformers import TextIteratorStreamer

    tokenizer = await run_in_threadpool(lambda: runtime.tokenizer)  # the first request loads the model: not here
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
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
    try:
        async for event in _streamed(stream_id, streamer, worker, done, kwargs, include_usage, metrics):
            yield event
    finally:  # the client went away (the response is cancelled) or the stream ended: a generation left stops
        kwargs["cancel"].set()


async def _streamed(stream_id: str, streamer: Any, worker: threading.Thread, done: dict[str, Any],
                    kwargs: dict[str, Any], include_usage: bool, metrics: Any) -> AsyncIterator[str]:
    created, raw, sent = int(time.time()), "", ""
    yield _sse({"id": stream_id, "object": "chat.completion.chunk", "created": created, "model": kwargs["model"],
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    async for piece in iterate_in_threadpool(streamer):
        raw += piece
        shown = _shown(raw, kwargs["stop"] or [])
        if len(shown) > len(sent) and shown.startswith(sent):
            yield _sse(_chunk(stream_id, created, kwargs["model"], {"content": shown[len(sent):]}))
            sent = shown
    await run_in_threadpool(worker.join)
    if "error" in done:
        yield _sse({"error": {"message": str(done["error"]), "type": "server_error"}})
        yield "data: [DONE]\n\n"
        return
    result: Answer = done["answer"]
    metrics.observe_answer(result)
    text = result.reply.text
    if len(text) > len(sent) and text.startswith(sent):  # what was held back (or chosen by the vote: all of it)
        yield _sse(_chunk(stream_id, created, kwargs["model"], {"content": text[len(sent):]}))
    final = _chunk(stream_id, created, kwargs["model"], {}, result.finish_reason)
    final["logmem"] = _logmem(result)
    yield _sse(final)
    if include_usage:
        yield _sse({"id": stream_id, "object": "chat.completion.chunk", "created": created,
                    "model": kwargs["model"], "choices": [], "usage": _usage(result)})
    yield "data: [DONE]\n\n"


async def proxied(body: ChatRequest, request: Request, response: Response, runtime: Runtime, caller: Caller,
                  max_tokens: int) -> Any:
    """Answer through the upstream: condition the messages with the caller's memory, forward them with the
    caller's parameters (naming the tenant's adapter where the upstream has it loaded), log the answer as a local
    one. Streaming passes the upstream's chunks on as they come; an upstream failure is an OpenAI-shaped error
    (before the first byte: the response's status), and a failed answer is never logged."""
    arrived = time.perf_counter()
    upstream = runtime.upstream
    assert upstream is not None
    served = body.model == SERVED_MODEL
    if not served and body.model != await upstream.base_model():
        raise HTTPException(404, f"the model {body.model!r} does not exist")
    limit, metrics = request.app.state.generation_limit, request.app.state.metrics
    slot = limit.acquire(caller)
    release = _once(lambda: limit.release(slot))
    try:
        messages = [m.plain() for m in body.messages]
        # at once: the conditioning (its embedding leaves the GIL), the tenant's active adapter (one SQL read) and the
        # upstream's model names (cached; read again every upstream_models_seconds): none waits for another
        cond, active, (base, loaded) = await asyncio.gather(
            run_in_threadpool(runtime.condition, caller, messages, with_adapter=False),
            run_in_threadpool(runtime.active_version, caller) if served else _nothing(),
            upstream_names(upstream))
        cond.active = active
        target, adapter = routed(caller, active, base, loaded)
        payload: dict[str, Any] = {"model": target, "messages": cond.conversation, "max_tokens": max_tokens}
        payload.update({k: v for k, v in (("temperature", body.temperature), ("top_p", body.top_p),
                                          ("stop", body.stop), ("user", body.user)) if v is not None})
        log = Logged(runtime, caller, cond, model=body.model, adapter=adapter, user=body.user, target=target)
        started = time.perf_counter()
        # the proxy's own time before the upstream has the request (a standard header: browsers and tools show it)
        forward_ms = (started - arrived) * 1e3
        timing = {"Server-Timing": f"condition;dur={cond.condition_ms:.2f}, forward;dur={forward_ms:.2f}"}
        if not body.stream:
            data = await until_gone(request, upstream.complete(payload), threading.Event())
            choice, usage = data["choices"][0], data.get("usage") or {}
            answer = await run_in_threadpool(lambda: log.answer(
                choice["message"]["content"], choice.get("finish_reason"), usage,
                (time.perf_counter() - started) * 1e3))
            release()
            metrics.observe_answer(answer)
            response.headers.update(timing)
            return completion(answer)
        stream = await upstream.stream({**payload, "stream_options": {"include_usage": True}})
    except BaseException:
        release()
        raise
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def closed() -> None:
        await stream.aclose()
        release()

    return StreamingResponse(_relayed(stream, log, include_usage, started, metrics, closed),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache", **timing},
                             background=BackgroundTask(closed))


async def until_gone(request: Request, work: Awaitable[T], cancel: threading.Event) -> T:
    """`work`'s result, unless the client disconnects first: then `cancel` is set (a local generation stops at its
    next token and its thread ends, which `work` waits for) and `work` is cancelled (an upstream request is dropped,
    which the upstream sees as its own client going away). Raises `GenerationCancelled` then."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            cancel.set()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise GenerationCancelled("the client went away")
        return task.result()
    finally:
        gone.cancel()


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the request's body was read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def routed(caller: Caller, active: str | None, base: str, loaded: dict[str, str]) -> tuple[str, str | None]:
    """(the upstream model a request goes to, the adapter version that answers): the tenant's active adapter where
    the upstream has it loaded (pushed as `<tenant>-<version>`), else the base model."""
    if active is not None and lora_name(caller.tenant, active) in loaded:
        return lora_name(caller.tenant, active), active
    return base, None


async def upstream_names(upstream: Upstream) -> tuple[str, dict[str, str]]:
    """The upstream's base model name and its loaded adapters (one model list read, at most)."""
    return await upstream.base_model(), await upstream.loaded()


async def _nothing() -> None:
    return None


class Logged:
    """How an upstream's answer to one conditioned request is logged and reported."""

    def __init__(self, runtime: Runtime, caller: Caller, cond: Conditioned, *, model: str, adapter: str | None,
                 user: str | None, target: str) -> None:
        self.runtime, self.caller, self.cond = runtime, caller, cond
        self.model, self.adapter, self.user, self.target = model, adapter, user, target

    def answer(self, text: str, finish_reason: str | None, usage: dict[str, Any], model_ms: float) -> Answer:
        return self.runtime.log_upstream(
            self.caller, self.cond, text, model=self.model, adapter=self.adapter, user=self.user,
            prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(usage.get("completion_tokens")
                                                                                      or 0),
            finish_reason="length" if finish_reason == "length" else "stop", model_ms=model_ms,
            upstream_model=self.target)


async def _relayed(stream: UpstreamStream, log: Logged, include_usage: bool, started: float, metrics: Any,
                   closed: Callable[[], Awaitable[None]]) -> AsyncIterator[str]:
    """The upstream's chunks as they come (under the interaction id and the caller's model name); its last chunk
    (the finish reason) and usage are held until the stream has ended and the answer is logged, then sent with
    the `logmem` object, as in local mode. A broken stream ends with an error event and logs nothing."""
    iid, created = log.cond.interaction_id, int(time.time())
    text, final, usage = "", None, None
    try:
        try:
            async for chunk in stream:
                choices = chunk.get("choices") or []
                if not choices:  # the usage chunk
                    usage = chunk.get("usage") or usage
                    continue
                text += (choices[0].get("delta") or {}).get("content") or ""
                relayed = {**chunk, "id": iid, "model": log.model, "created": created}
                if choices[0].get("finish_reason"):
                    final = relayed
                    continue
                yield _sse(relayed)
            answer = await run_in_threadpool(lambda: log.answer(
                text, (final or {}).get("choices", [{}])[0].get("finish_reason"), usage or {},
                (time.perf_counter() - started) * 1e3))
        except Exception as exc:  # the upstream's failure, or the log's (one transaction): nothing is half-kept
            upstream = isinstance(exc, UpstreamError)
            logger.log(logging.WARNING if upstream else logging.ERROR, "interaction %s not logged: %s", iid, exc)
            kind, code = (exc.kind, exc.code) if isinstance(exc, UpstreamError) else ("server_error", None)
            yield _sse({"error": {"message": str(exc) if upstream else "internal error", "type": kind, "param": None,
                                  "code": code}})
            yield "data: [DONE]\n\n"
            return
        metrics.observe_answer(answer)
        last = _chunk(iid, created, log.model, {}, answer.finish_reason)
        if final is not None:
            last = {**final, "choices": [{**final["choices"][0], "finish_reason": answer.finish_reason}]}
        yield _sse({**last, "logmem": _logmem(answer)})
        if include_usage:
            yield _sse({"id": iid, "object": "chat.completion.chunk", "created": created, "model": log.model,
                        "choices": [], "usage": _usage(answer)})
        yield "data: [DONE]\n\n"
    finally:
        await closed()


def _once(action: Callable[[], None]) -> Callable[[], None]:
    done = False

    def once() -> None:
        nonlocal done
        if not done:
            done = True
            action()
    return once


async def _after(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for event in rest:
        yield event


def _shown(raw: str, stop: list[str]) -> str:
    """What of the text generated so far can be streamed: the stored answer is stripped and ends before the first
    stop string, so leading and trailing whitespace and a tail that may begin a stop string are held back."""
    text = raw.lstrip()
    ends = [i for i in (text.find(s) for s in stop) if i >= 0]
    if ends:
        return text[:min(ends)].rstrip()
    hold = max((n for s in stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
    return text[:len(text) - hold].rstrip()


def _chunk(chunk_id: str, created: int, model: str, delta: dict[str, str],
           finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
