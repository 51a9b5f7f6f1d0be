"""`create_app(settings)`: the HTTP service over one `Runtime`; OpenAPI schema at /openapi.json."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from logmem.memory.errors import (
    AdapterError,
    ConfigError,
    GenerationCancelled,
    JobStateError,
    LogmemError,
    NotEnoughDataError,
    NotFoundError,
    PromptTooLongError,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from .deps import GenerationLimit
from .metrics import Message, Metrics, Scope
from .routes import canaries, chat, consolidation, health, inspector, inspector_api, interactions, lora, memory, tenants
from .runtime import Runtime
from .settings import Settings
from .upstream import UpstreamError

logger = logging.getLogger(__name__)
# a domain error -> (status, OpenAI error type)
STATUS: list[tuple[type[Exception], int, str]] = [
    (NotFoundError, 404, "not_found_error"),
    (AdapterError, 409, "conflict_error"),
    (JobStateError, 409, "conflict_error"),
    (NotEnoughDataError, 409, "conflict_error"),
    (PromptTooLongError, 400, "invalid_request_error"),
    (GenerationCancelled, 503, "server_error"),
    (ConfigError, 422, "invalid_request_error"),
    (ValueError, 422, "invalid_request_error"),
]
HTTP_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
              405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
              429: "rate_limit_error"}


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """The service. `runtime` (tests, embedding) replaces the one built from `settings` (default: the
    `LOGMEM_*` environment). With `settings.worker`, a thread runs queued and periodic consolidation jobs."""
    runtime = runtime or Runtime(settings or Settings())
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = None
        if runtime.settings.worker:
            worker = threading.Thread(target=runtime.work, args=(stop,), name="logmem-worker", daemon=True)
            worker.start()
        runtime.stopping.clear()  # an app can be started again over the same runtime (tests, embedding)
        deadline, restore = _bounded_exit(runtime)
        try:
            yield
        finally:
            restore()
            runtime.stopping.set()
            stop.set()
            if worker is not None:  # a job in training is left to the next worker's recovery after the bound
                worker.join(timeout=max(0.1, (deadline[0] or time.monotonic() + 5) - time.monotonic()))
            if runtime.upstream is not None:
                await runtime.upstream.aclose()
            runtime.close()

    app = FastAPI(title="logmem", version="0.1.0", lifespan=lifespan,
                  description="Memory and consolidation for a deployed language model, behind OpenAI's API.",
                  # FastAPI's native OpenTelemetry off: no provider lookups on every request (logmem's own metrics
                  # are at /metrics)
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.runtime = runtime
    app.state.metrics = metrics = Metrics(runtime)
    app.state.generation_limit = GenerationLimit(runtime.settings.max_concurrent)
    for router in (chat.router, interactions.router, memory.router, consolidation.jobs, consolidation.adapters,
                   canaries.router, health.router, inspector_api.router, inspector.router, lora.router,
                   tenants.router):
        app.include_router(router)
    _handle_errors(app)
    app.add_middleware(_BodyLimit, limit=runtime.settings.max_body_bytes,
                       paths={tenants.IMPORT_PATH: runtime.settings.max_archive_bytes})
    app.add_middleware(_Measured, metrics=metrics)
    return app


GRACE = 1.0  # seconds between cancelling the generations in flight and the shutdown bound


def _bounded_exit(runtime: Runtime) -> tuple[list[float | None], Callable[[], None]]:
    """Bound the shutdown on SIGTERM or SIGINT: uvicorn's own handler still runs (it stops taking requests and waits
    for those in flight); generations still running `shutdown_seconds` - GRACE after the signal are cancelled, so that
    the wait ends within `shutdown_seconds`. Returns ([the deadline, once signalled], what restores the handlers).
    Outside the main thread (a server in a test's thread) signals are not ours to take: nothing is installed."""
    deadline: list[float | None] = [None]
    if threading.current_thread() is not threading.main_thread():
        return deadline, lambda: None
    bound = runtime.settings.shutdown_seconds
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handle(sig: int, frame: Any) -> None:
        if deadline[0] is None:
            deadline[0] = time.monotonic() + bound
            timer = threading.Timer(max(bound - GRACE, 0.0), runtime.stopping.set)
            timer.daemon = True
            timer.start()
            logger.info("stopping: generations in flight have %.1f s", max(bound - GRACE, 0.0))
        handler = previous[sig]
        if callable(handler):
            handler(sig, frame)

    for sig in previous:
        signal.signal(sig, handle)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return deadline, restore


def error(status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _handle_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return error(422, f"{where}: {first['msg']}", "invalid_request_error", param=where)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "model_not_found" if exc.status_code == 404 and "model" in str(exc.detail) else None
        field, sep, _ = str(exc.detail).partition(": ")  # the routes' own 422s open with the field they refuse
        param = "model" if code else field if exc.status_code == 422 and sep and " " not in field else None
        return error(exc.status_code, str(exc.detail), HTTP_TYPES.get(exc.status_code, "server_error"),
                     param=param, code=code, headers=dict(exc.headers or {}))

    @app.exception_handler(UpstreamError)
    async def upstream(request: Request, exc: UpstreamError) -> JSONResponse:
        logger.warning("upstream: %s", exc)
        return error(exc.status, str(exc), exc.kind, code=exc.code,
                     headers={"Retry-After": exc.retry_after} if exc.retry_after else None)

    @app.exception_handler(LogmemError)
    async def domain(request: Request, exc: LogmemError) -> JSONResponse:
        return _domain(exc)

    @app.exception_handler(ValueError)
    async def value(request: Request, exc: ValueError) -> JSONResponse:
        return _domain(exc)


def _domain(exc: Exception) -> JSONResponse:
    for kind, status, name in STATUS:
        if isinstance(exc, kind):
            return error(status, str(exc), name, param=getattr(exc, "param", None), code=getattr(exc, "code", None))
    logger.error("unexpected %s: %s", type(exc).__name__, exc)
    return error(500, "internal error", "server_error")


class _Measured:
    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = metrics.middleware(app)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        await self.app(scope, receive, send)


class _BodyLimit:
    """413 for a request body over `limit` bytes (over `paths[its path]` for those paths), by its Content-Length
    or as it streams in."""

    def __init__(self, app: Any, limit: int, paths: dict[str, int] | None = None) -> None:
        self.app, self.default, self.paths = app, limit, paths or {}

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.paths.get(scope["path"], self.default)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await error(413, f"request body over {limit} bytes", "invalid_request_error")(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge(limit)
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await error(413, f"request body over {limit} bytes", "invalid_request_error")(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    # an HTTPException, so that FastAPI's body parsing lets it through (any other error there becomes a 400)
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")
