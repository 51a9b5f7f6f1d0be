"""A request's client connection, as the answering routes watch it: an answer's work that stops when its client goes
away, and a release that happens once whichever way the answer ends."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from logmem.memory.errors import GenerationCancelled

T = TypeVar("T")


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


def once(action: Callable[[], None]) -> Callable[[], None]:
    done = False

    def once() -> None:
        nonlocal done
        if not done:
            done = True
            action()
    return once
