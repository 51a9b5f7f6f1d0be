"""`/healthz` and `/metrics` (Prometheus text), both readable without a key; the series that name tenants only
with an admin key (or the `metrics_per_tenant` setting)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import RuntimeDep
from ..runtime import Runtime

router = APIRouter(tags=["health"])
# an admin key acts only for a tenant it names; naming this one tells an admin key from a tenant's
ANY_TENANT = "*"


@router.get("/healthz")
def healthz(runtime: RuntimeDep) -> dict[str, Any]:
    """Alive, and the database answers."""
    runtime.ping()
    return {"status": "ok"}


@router.get("/metrics", response_class=Response, responses={401: {"description": "a key that is not an admin's"}})
def metrics(request: Request, runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> Response:
    """The aggregate series to anyone; with an admin key (`Authorization: Bearer <key>`), or with the
    `metrics_per_tenant` setting, also those that name tenants. Any other key is a 401: a scraper given the wrong
    key hears of it rather than silently losing the tenants' series."""
    per_tenant = _admin(runtime, authorization) or runtime.settings.metrics_per_tenant
    return Response(request.app.state.metrics.render(per_tenant=per_tenant), media_type=CONTENT_TYPE_LATEST)


def _admin(runtime: Runtime, authorization: str | None) -> bool:
    """Whether the request carries an admin key (False: none at all). Raises a 401 for any other key."""
    if authorization is None:
        return False
    scheme, _, key = authorization.partition(" ")
    caller = runtime.authenticate(key.strip(), tenant=ANY_TENANT) if scheme.lower() == "bearer" and key.strip() \
        else None
    if caller is None or not caller.admin:
        raise HTTPException(status_code=401, detail="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return True
