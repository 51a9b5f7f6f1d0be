"""`/v1/consolidations` (jobs: 202 and an id, never trained inside the request) and `/v1/adapters`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from ..deps import CallerDep, RowId, RuntimeDep
from ..runtime import JobData
from ..schemas import ActiveOut, AdapterOut, ConsolidationIn, ErrorOut, Identifier, JobOut
from .views import adapter_view

jobs = APIRouter(prefix="/v1/consolidations", tags=["consolidation"])
adapters = APIRouter(prefix="/v1/adapters", tags=["consolidation"])
Version = Annotated[Identifier, Path(min_length=1, max_length=64)]


@jobs.post("", status_code=202, response_model=JobOut)
def submit(body: ConsolidationIn, runtime: RuntimeDep, caller: CallerDep) -> Any:
    """Queue a consolidation of the caller's memory; a worker (the server's, or `logmem worker`) runs it."""
    job = runtime.submit_consolidation(caller, body.params())
    return JSONResponse(_job(job), status_code=202, headers={"Location": f"/v1/consolidations/{job.id}"})


@jobs.get("", response_model=list[JobOut])
def list_jobs(runtime: RuntimeDep, caller: CallerDep) -> Any:
    return [_job(j) for j in runtime.job_list(caller)]


@jobs.get("/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
def get_job(job_id: RowId, runtime: RuntimeDep, caller: CallerDep) -> Any:
    """A job's state, progress and (when finished) the gate's figures."""
    return _job(runtime.job(caller, job_id))


@adapters.get("", response_model=list[AdapterOut])
def list_adapters(runtime: RuntimeDep, caller: CallerDep) -> Any:
    return [adapter_view(a) for a in runtime.adapters(caller)]


@adapters.post("/rollback", response_model=ActiveOut)
def rollback(runtime: RuntimeDep, caller: CallerDep) -> Any:
    """Back to the adapter active before (or the base model); the running servers follow at their next request."""
    return {"active": runtime.rollback(caller).active}


@adapters.post("/{version}/activate", response_model=AdapterOut, responses={404: {"model": ErrorOut}})
def activate(version: Version, runtime: RuntimeDep, caller: CallerDep, force: bool = False) -> Any:
    return adapter_view(runtime.activate(caller, version, force=force).adapter)


def _job(job: JobData) -> dict[str, Any]:
    return {"id": job.id, "kind": job.kind, "status": job.status, "progress": job.progress, "message": job.message,
            "params": {k: v for k, v in job.params.items() if not k.startswith("_")}, "metrics": job.metrics,
            "error": job.error, "created_at": job.created_at, "started_at": job.started_at,
            "finished_at": job.finished_at}
