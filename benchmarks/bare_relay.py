"""The floor of a proxy's hop: an ASGI app that passes POST /v1/chat/completions to an upstream and streams its bytes
back unchanged (nothing parsed, no memory, no log), with the same HTTP stack logmem's proxy runs on (uvicorn, aiohttp).

    LOGMEM_RELAY_UPSTREAM=http://127.0.0.1:8000 LOGMEM_RELAY_KEY=... uvicorn bare_relay:app --app-dir benchmarks

`bench_upstream.py` measures its hop beside the proxy's: what any Python proxy on these cores adds at least."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

Message = dict[str, Any]
_session: list[aiohttp.ClientSession] = []


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[Message]],
              send: Callable[[Message], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _session:
                    await _session[0].close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if not _session:
        _session.append(aiohttp.ClientSession(headers={"Authorization": f"Bearer {os.environ['LOGMEM_RELAY_KEY']}",
                                                       "Content-Type": "application/json"}))
    async with _session[0].post(f"{os.environ['LOGMEM_RELAY_UPSTREAM']}{scope['path']}", data=body) as upstream:
        await send({"type": "http.response.start", "status": upstream.status,
                    "headers": [(b"content-type", upstream.headers.get("content-type", "").encode())]})
        async for chunk in upstream.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
