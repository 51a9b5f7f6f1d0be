"""`Upstream`: the OpenAI-compatible server (vLLM, TGI, llama.cpp, a hosted API) that generates when logmem runs as
a proxy (`logmem serve --upstream URL`). One `aiohttp.ClientSession` (httpx's `AsyncClient` before: in probes against a
local upstream, a streamed request reached its first token 1.8 ms later with it, and the proxy's hop alone took ~3.5
ms p50 against ~2.9), a limit on requests in flight, retries with backoff only before any byte of an answer reached the
caller, and every failure turned into an `UpstreamError` that carries the status and OpenAI error type the caller
should get."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from logmem.memory.errors import LogmemError

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})  # the upstream may answer the same request a moment later
DRAIN_SECONDS = 1.0  # how long a stream's body may go on after its [DONE] before its connection is dropped


class UpstreamError(LogmemError):
    """The upstream failed a request: `status` and `kind` are what the caller gets, in OpenAI's error shape."""

    def __init__(self, message: str, *, status: int = 502, kind: str = "upstream_error", code: str | None = None,
                 retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.code, self.retry_after = status, kind, code, retry_after


def lora_name(tenant: str, version: str) -> str:
    """The immutable name a tenant's adapter version is loaded under in the upstream (never reloaded in place)."""
    return f"{tenant}-{version}"


@dataclass
class ModelNames:
    """What the upstream's /v1/models lists: its base models (with the folders they were read from) and the LoRA
    adapters loaded on them."""

    base: list[str]  # base model ids, first the one to answer with
    roots: list[str]  # their `root` (the folder or hub name they were loaded from) where it is given
    loras: dict[str, str] = field(default_factory=dict)  # adapter name -> the base it was loaded on


class Upstream:
    """An OpenAI-compatible server at `url` (its base URL with `/v1`).

    Args:
        url: the base URL, e.g. http://127.0.0.1:8000/v1.
        key: its Bearer key, or None.
        model: the model name it serves (None: the first base model its /v1/models lists).
        timeout: seconds to connect, and between two bytes of an answer; also the longest wait for a slot.
        retries: how many times a request is tried again (before any byte reached the caller), with `backoff`
            seconds before the first retry, doubled for each next one.
        concurrency: requests in flight to the upstream at once.
        models_seconds: how long its model list (which adapters are loaded) is trusted.
    """

    def __init__(self, url: str, *, key: str | None = None, model: str | None = None, timeout: float = 60.0,
                 retries: int = 2, backoff: float = 0.25, concurrency: int = 16, models_seconds: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.concurrency, self.models_seconds = concurrency, models_seconds
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._names: tuple[float, ModelNames] | None = None
        self._unlisted_at: float | None = None  # when its model list last could not be read

    # --- the connection -----------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._client is None:  # made on first use, inside the server's event loop
            # `timeout` bounds the connection and each wait for the next bytes, never a whole (long) answer
            timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=self.timeout)
            self._client = aiohttp.ClientSession(timeout=timeout, headers=self._headers,
                                                 connector=aiohttp.TCPConnector(limit=self.concurrency))
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client, self._slots = None, None  # both belong to the event loop that is ending

    async def _slot(self) -> None:
        self._http()
        assert self._slots is not None
        if not self._slots.locked():  # a free slot: taken at once (wait_for would cost a task and a loop turn)
            await self._slots.acquire()
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout)
        except TimeoutError:
            raise UpstreamError(f"the upstream is busy: {self.concurrency} requests in flight for {self.timeout:.0f} s",
                                status=503, code="upstream_busy", retry_after="1") from None

    def _release(self) -> None:
        assert self._slots is not None
        self._slots.release()

    # --- the model list -----------------------------------------------------------------------
    async def names(self) -> ModelNames:
        """The upstream's models (cached `models_seconds`)."""
        now = time.monotonic()
        if self._names is not None and now - self._names[0] < self.models_seconds:
            return self._names[1]
        names = parse_models(await self._send("GET", "/models"))
        if self.model is None and not names.base:
            raise UpstreamError("the upstream lists no model; pass --upstream-model", code="upstream_malformed")
        self._names = (now, names)
        return names

    def forget_names(self) -> None:
        """Read the model list again on the next request (after a push changed the adapters loaded there)."""
        self._names, self._unlisted_at = None, None

    async def base_model(self) -> str:
        """The model name requests without an adapter go to: `model`, else the first base model the upstream lists
        under the name it was loaded by (its `root`: a logmem upstream also lists `default`, its own memory's), else
        the first it lists."""
        if self.model:
            return self.model
        names = await self.names()
        return next((m for m in names.base if m in names.roots), names.base[0])

    async def loaded(self) -> dict[str, str]:
        """The LoRA adapters loaded there (name -> its base). Empty, for `models_seconds`, when the upstream's model
        list cannot be read (a hosted API without one): requests then go to the base model, never fail for it."""
        now = time.monotonic()
        if self._unlisted_at is not None and now - self._unlisted_at < self.models_seconds:
            return {}
        try:
            names = await self.names()
        except UpstreamError as exc:
            self._unlisted_at = now
            logger.warning("the upstream's model list is unreadable (%s): its adapters are taken as none", exc)
            return {}
        self._unlisted_at = None
        return names.loras

    # --- answering ----------------------------------------------------------------------------
    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /chat/completions without streaming; the upstream's completion (checked for a choice)."""
        await self._slot()
        try:
            response = await self._send("POST", "/chat/completions", json={**body, "stream": False})
        finally:
            self._release()
        try:
            data = response.json()
            if not isinstance(data["choices"][0]["message"]["content"], str):
                raise TypeError("content")
        except (ValueError, KeyError, IndexError, TypeError):
            raise UpstreamError(f"the upstream's completion is malformed: {response.text[:200]!r}",
                                code="upstream_malformed") from None
        return dict(data)

    async def stream(self, body: dict[str, Any]) -> UpstreamStream:
        """POST /chat/completions with `stream`: opened (retried, status checked) before this returns; iterate the
        result for each chunk as the upstream sends it, and `aclose` it in every case."""
        await self._slot()
        try:
            response = await self._send("POST", "/chat/completions", json={**body, "stream": True}, stream=True)
        except BaseException:
            self._release()
            raise
        return UpstreamStream(self, response)

    async def _send(self, method: str, path: str, *, stream: bool = False, json: Any = None) -> Any:
        """One request, tried again after a connection failure or a retryable status, with backoff: a 2xx answer (a
        `Reply`, read whole; or with `stream`, the open `aiohttp.ClientResponse`, unread), or UpstreamError."""
        client = self._http()
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await client.request(method, f"{self.url}{path}", json=json)
                if response.status < 300 and stream:
                    return response
                try:
                    reply = Reply(response.status, response.headers, await response.read(), str(response.url))
                finally:
                    response.release()
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError,
                    aiohttp.ServerDisconnectedError) as exc:
                # nothing was answered: the request may go again
                if last:
                    raise UpstreamError(f"the upstream at {self.url} is unreachable: {type(exc).__name__}: {exc}",
                                        code="upstream_unreachable") from None
                await self._wait(attempt, f"{type(exc).__name__}")
                continue
            except TimeoutError:
                raise UpstreamError(f"the upstream did not answer in {self.timeout:.0f} s", status=504,
                                    code="upstream_timeout") from None
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"the upstream failed: {type(exc).__name__}: {exc}") from None
            if reply.status_code < 300:
                return reply
            if reply.status_code in RETRY_STATUS and not last:
                await self._wait(attempt, f"status {reply.status_code}", reply.headers.get("retry-after"))
                continue
            raise refused(reply)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    async def _wait(self, attempt: int, why: str, retry_after: str | None = None) -> None:
        delay = self.backoff * 2 ** attempt
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), self.timeout))
        logger.warning("upstream %s: %s; trying again in %.2f s", self.url, why, delay)
        await asyncio.sleep(delay)


class UpstreamStream:
    """An open streamed answer of the upstream: its chunks, parsed, until `[DONE]`. Iterating raises UpstreamError
    for a broken stream (a transport error, a malformed or error event, the end before `[DONE]`); `aclose` gives
    the connection and the upstream slot back (once; also after a failure)."""

    def __init__(self, upstream: Upstream, response: aiohttp.ClientResponse) -> None:
        self._upstream, self._response, self._open = upstream, response, True

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            try:
                self._response.release()  # back to the pool when its body was read to the end, else closed
            finally:
                self._upstream._release()

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            lines = _lines(self._response.content)
            async for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == b"[DONE]":
                    await _drained(lines)
                    return
                yield _chunk(data)
            raise UpstreamError("the upstream's stream ended before [DONE]", code="upstream_stream")
        except TimeoutError:
            raise UpstreamError(f"the upstream sent nothing for {self._upstream.timeout:.0f} s", status=504,
                                code="upstream_timeout") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"the upstream's stream broke: {type(exc).__name__}: {exc}",
                                code="upstream_stream") from None


async def _lines(body: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body's lines (without their line ending) as they arrive, however long: aiohttp's own line iterator
    refuses a line over its read buffer (64 KiB), and one event of an answer may be longer."""
    pending = b""
    async for data in body.iter_any():
        pending += data
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r")
    if pending:
        yield pending.rstrip(b"\r")


async def _drained(lines: AsyncIterator[bytes]) -> None:
    """Read the stream past its `[DONE]` to the body's end, so that its connection goes back to the client's pool: one
    closed unread is dropped, and every next request paid a new TCP connection to the upstream (~1 ms of the proxy's
    hop here). An upstream that keeps the body open longer than DRAIN_SECONDS after [DONE] loses the connection."""
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in lines:
                pass
    except (TimeoutError, aiohttp.ClientError):
        pass


def _chunk(data: bytes) -> dict[str, Any]:
    """One `data:` payload of the upstream's stream, parsed; an error event or a malformed one raises."""
    try:
        chunk = json.loads(data)
    except ValueError:
        raise UpstreamError(f"the upstream sent a malformed chunk: {data[:200].decode(errors='replace')!r}",
                            code="upstream_malformed") from None
    if not isinstance(chunk, dict) or "error" in chunk or not isinstance(chunk.get("choices", []), list):
        error = chunk.get("error") if isinstance(chunk, dict) else chunk
        message = error.get("message") if isinstance(error, dict) else error
        raise UpstreamError(f"the upstream failed mid-answer: {message}", code="upstream_stream")
    return chunk


class Response(Protocol):
    """A whole HTTP answer, as `parse_models` and `refused` read it: an httpx `Response` (the push's client) or a
    `Reply` (the proxy's)."""

    @property
    def status_code(self) -> int: ...

    @property
    def url(self) -> Any: ...

    @property
    def headers(self) -> Any: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


@dataclass(frozen=True)
class Reply:
    """An upstream's answer read whole."""

    status_code: int
    headers: Any  # case-insensitive, as the client gave them
    content: bytes
    url: str

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def parse_models(response: Response) -> ModelNames:
    """An OpenAI /v1/models answer as `ModelNames` (vLLM lists a LoRA adapter with its base as `parent`)."""
    try:
        cards = response.json()["data"]
        return ModelNames([c["id"] for c in cards if not c.get("parent")],
                          [c["root"] for c in cards if not c.get("parent") and c.get("root")],
                          {c["id"]: c["parent"] for c in cards if c.get("parent")})
    except (ValueError, KeyError, TypeError) as exc:
        raise UpstreamError(f"{response.url} is not an OpenAI model list: {exc}", code="upstream_malformed") from None


def refused(response: Response) -> UpstreamError:
    """The error a caller gets for the upstream's non-2xx answer: the caller's own mistakes (400, 404, 413, 422)
    keep their status and message; a refused proxy key or an upstream fault is a 502, a timeout 504, a rate limit
    429 with the upstream's Retry-After."""
    status = response.status_code
    try:
        body = response.json()
        found = body.get("error", body) if isinstance(body, dict) else {}
        message = found.get("message") or found.get("detail") or response.text if isinstance(found, dict) else found
    except ValueError:
        message = response.text
    text = f"upstream answered {status}: {str(message)[:500]}"
    if status == 429:
        return UpstreamError(text, status=429, kind="rate_limit_error", code="upstream_rate_limited",
                             retry_after=response.headers.get("retry-after", "1"))
    if status in (400, 404, 409, 413, 422):
        return UpstreamError(text, status=status, kind="not_found_error" if status == 404 else "invalid_request_error",
                             code="upstream_refused")
    if status == 504:
        return UpstreamError(text, status=504, code="upstream_timeout")
    return UpstreamError(text, status=502, code="upstream_status")
