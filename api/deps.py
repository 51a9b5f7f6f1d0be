"""What every route depends on: the runtime, the caller (API key -> tenant), the per-key generation limit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Path, Request

from .runtime import Caller, Runtime
from .schemas import Identifier


async def get_runtime(request: Request) -> Runtime:  # async: a plain def would cost a threadpool hop
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_caller(request: Request, authorization: Annotated[str | None, Header()] = None,
                     x_logmem_tenant: Annotated[Identifier | None, Header(max_length=200)] = None) -> Caller:
    """The caller of a request: its Bearer key's tenant (an admin key: the tenant X-Logmem-Tenant names).
    A missing, wrong or revoked key is a 401 that says nothing more. Async on purpose: the lookup is one
    indexed read (~0.1 ms), cheaper than the threadpool hop a plain def would cost every request."""
    scheme, _, key = (authorization or "").partition(" ")
    runtime: Runtime = request.app.state.runtime
    caller = runtime.authenticate(key.strip(), tenant=x_logmem_tenant or None) \
        if scheme.lower() == "bearer" and key.strip() else None
    if caller is None:
        raise HTTPException(status_code=401, detail="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return caller


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
# a row id in a path (experience, job): the store's keys are SQL INTEGERs, 32 bits on PostgreSQL, so a larger id is a
# 422 naming the parameter here rather than an overflow in the database
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_admin(caller: CallerDep) -> Caller:
    """An admin key acting for a tenant it names (X-Logmem-Tenant), for what no tenant owns: the server's loaded
    LoRA adapters (`adapters push` names the tenant it pushes for). Any other caller is a 401 that says no more."""
    if not caller.admin:
        raise HTTPException(status_code=401, detail="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return caller


AdminDep = Annotated[Caller, Depends(get_admin)]


class GenerationLimit:
    """At most `limit` generations in flight per key (admin: per named tenant): one tenant cannot take every
    slot of the model. Past the limit a request is refused at once (429 with Retry-After), never queued."""

    def __init__(self, limit: int, retry_after: int = 1) -> None:
        self.limit, self.retry_after = limit, retry_after
        self._lock = threading.Lock()
        self._in_flight: dict[object, int] = {}

    def acquire(self, caller: Caller) -> object:
        """Take a slot for `caller`; returns the token to `release` it with. Raises a 429 past the limit."""
        who = caller.key_id if caller.key_id is not None and not caller.admin else ("admin", caller.tenant)
        with self._lock:
            if self._in_flight.get(who, 0) >= self.limit:
                raise HTTPException(status_code=429, detail=f"at most {self.limit} generations at once per key",
                                    headers={"Retry-After": str(self.retry_after)})
            self._in_flight[who] = self._in_flight.get(who, 0) + 1
        return who

    @property
    def busy(self) -> int:
        """Generations in flight, all keys together."""
        with self._lock:
            return sum(self._in_flight.values())

    def release(self, who: object) -> None:
        with self._lock:
            self._in_flight[who] -= 1
            if not self._in_flight[who]:
                del self._in_flight[who]

    @contextmanager
    def slot(self, caller: Caller) -> Iterator[None]:
        who = self.acquire(caller)
        try:
            yield
        finally:
            self.release(who)
