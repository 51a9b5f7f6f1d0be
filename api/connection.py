"""A request's client connection, as the answering routes watch it: an answer's work that stops when its client goes
away (whole or streamed), and a release that happens once whichever way the answer ends."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from logmem.memory.errors import GenerationCancelled

T = TypeVar("T")


async def until_gone(request: Request, work: Awaitable[T], cancel: threading.Event) -> T:
    """`work`'s result, unless the client disconnects first: then `cancel` is set (a local generation stops at its
    next token and its thread ends, which `work` waits for) and `work` is cancelled (an upstream request is dropped,
    which the upstream sees as its own client going away). Raises `GenerationCancelled` then."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request.receive))
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


async def _disconnected(receive: Callable[[], Awaitable[Any]]) -> None:
    """Returns once the client has gone (the request's body was read: the next message is the disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class Streamed(StreamingResponse):
    """A `StreamingResponse` whose stream runs in the request's own task, the client's disconnect watched by a task
    beside it that cancels the stream when the client goes away (the body's generator closes: an upstream request
    is dropped, a local generation stops), then the background task runs, as Starlette's does. Starlette's runs the
    stream in an anyio task group under uvicorn (ASGI spec 2.3): ~0.2 ms more before the first byte, every request."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        streaming = asyncio.current_task()
        assert streaming is not None
        finished = False

        async def watch() -> None:
            await _disconnected(receive)
            if not finished:
                streaming.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.stream_response(send)
            finished = True
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():  # cancelled from elsewhere (a shutdown): not ours
                raise
            streaming.uncancel()  # the client went away: the stream ends here, quietly
        finally:
            watcher.cancel()
        if self.background is not None:
            await self.background()


def once(action: Callable[[], None]) -> Callable[[], None]:
    done = False

    def once() -> None:
        nonlocal done
        if not done:
            done = True
            action()
    return once
