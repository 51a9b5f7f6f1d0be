"""`/v1/tenant`: a tenant exported whole as one archive, and an archive imported (`logmem export` / `import`). Admin
keys only: the tenant is the one the admin key names (X-Logmem-Tenant); an import writes that tenant alone."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from logmem.memory.errors import ArchiveError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from ..deps import AdminDep, RuntimeDep
from ..schemas import ErrorOut, ImportOut

router = APIRouter(prefix="/v1/tenant", tags=["tenants"])
IMPORT_PATH = "/v1/tenant/import"  # its bodies are archives: their own size limit (`Settings.max_archive_bytes`)
ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut}, 404: {"model": ErrorOut},
                                           413: {"model": ErrorOut}, 422: {"model": ErrorOut}}
ZIP: dict[str, Any] = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
BYTES: dict[str, Any] = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}  # any type


@router.get("/export", response_class=FileResponse, responses={200: {"content": ZIP}, **ERRORS})
async def export_tenant(runtime: RuntimeDep, admin: AdminDep) -> FileResponse:
    """The named tenant whole (interactions, feedback, experiences with their vectors, serving mode, adapters with
    their lineage) as one zip archive, its members' SHA-256 in its manifest. A tenant with nothing in it is a 404."""
    folder = Path(tempfile.mkdtemp(prefix="logmem-export-"))
    try:
        await run_in_threadpool(runtime.export_tenant, admin, folder / "tenant.zip")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(folder / "tenant.zip", media_type="application/zip", filename="logmem-tenant.zip",
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


@router.post(IMPORT_PATH.removeprefix(router.prefix), response_model=ImportOut, responses=ERRORS,
             openapi_extra={"requestBody": {"required": True, "content": BYTES}})
async def import_tenant(request: Request, runtime: RuntimeDep, admin: AdminDep, reembed: bool | None = None) -> Any:
    """Import an archive (the request body, as `logmem export` wrote it) as the named tenant. It is verified whole
    first: a truncated or changed archive is a 422 naming the member and what is wrong, and nothing is written. Rows
    already present are kept, so sending it twice changes nothing. `reembed`: see `logmem import --help`."""
    folder = Path(tempfile.mkdtemp(prefix="logmem-import-"))
    try:
        with (folder / "upload.zip").open("wb") as fh:
            async for chunk in request.stream():
                await run_in_threadpool(fh.write, chunk)
        report = await run_in_threadpool(runtime.import_tenant, admin, folder / "upload.zip", reembed=reembed)
    except ArchiveError as exc:  # named as the caller knows it, not by this server's temporary path
        raise ArchiveError(exc.reason, archive="the request body", member=exc.member, line=exc.line,
                           field=exc.field) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return report.to_json()
