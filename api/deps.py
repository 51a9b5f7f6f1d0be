"""What every route depends on: the runtime, the caller (API key -> tenant), the per-key generation limit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from pydantic import Field, TypeAdapter, ValidationError

from .runtime import Caller, Runtime
from .schemas import Identifier


async def get_runtime(request: Request) -> Runtime:  # async: a plain def would cost a threadpool hop
    runtime: Runtime = request.app.state.runtime
    return runtime


class KeyAuth(SecurityBase):
    """The caller of a request: its Bearer key's tenant (an admin key: the tenant X-Logmem-Tenant names). A missing,
    wrong or revoked key is a 401 that says nothing more. One dependency that reads both headers itself, documented
    as the API's bearer scheme: as two header parameters FastAPI validated each on every request (~0.13 ms of the
    proxy's hop, `benchmarks/bench_upstream.py`). Async on purpose: the lookup is one indexed read (~0.1 ms, cached
    by the store), cheaper than the threadpool hop a plain def would cost every request."""

    def __init__(self) -> None:
        self.model = HTTPBearerModel(description=f"an API key; an admin key acts for the tenant its request names in "
                                                 f"the {TENANT_HEADER} header")
        self.scheme_name = "bearer"

    async def __call__(self, request: Request) -> Caller:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        named = request.headers.get(TENANT_HEADER)
        runtime: Runtime = request.app.state.runtime
        caller = runtime.authenticate(key, tenant=_tenant(named) if named else None) \
            if scheme.lower() == "bearer" and key else None
        if caller is None:
            raise HTTPException(status_code=401, detail="unauthorized", headers={"WWW-Authenticate": "Bearer"})
        return caller


TENANT_HEADER = "X-Logmem-Tenant"
_TENANT = TypeAdapter(Annotated[Identifier, Field(max_length=200)])


def _tenant(value: str) -> str:
    """The tenant an admin key names, checked as any identifier (a 422 naming the header where it is not one)."""
    try:
        return _TENANT.validate_python(value)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("header", TENANT_HEADER.lower())}
                                      for e in exc.errors(include_url=False)]) from None


get_caller = KeyAuth()
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
# a row id in a path (experience, job): the store's keys are SQL INTEGERs, 32 bits on PostgreSQL, so a larger id is a
# 422 naming the parameter here rather than an overflow in the database
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
CallerDep = Annotated[Caller, Security(get_caller)]


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
