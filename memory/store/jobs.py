"""Job rows: queued, running (with a heartbeat), finished; one running job per tenant."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import JobConflictError, JobStateError, NotFoundError
from ..vocabulary import JOB_ENDS
from .engine import StoreBase
from .records import JobData, job_data
from .schema import JobRow
from .sql import plain, rowcount


class JobStore(StoreBase):
    def add_job(self, *, kind: str, tenant: str, params: dict[str, Any]) -> int:
        """A new queued job; returns its id."""
        with self.transaction() as tx:
            row = JobRow(kind=kind, tenant=tenant, status="queued", progress=0.0, params=json.dumps(params),
                         created_at=time.time())
            tx.add(row)
            tx.flush()
            return row.id

    def get_job(self, *, job_id: int) -> JobData:
        with Session(self.engine) as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            return job_data(row)

    def jobs(self, *, tenant: str | None = None, status: str | None = None) -> list[JobData]:
        """Jobs by id, optionally of one tenant and in one status."""
        stmt = select(JobRow).order_by(JobRow.id)
        if tenant is not None:
            stmt = stmt.where(JobRow.tenant == tenant)
        if status is not None:
            stmt = stmt.where(JobRow.status == status)
        with Session(self.engine) as s:
            return [job_data(r) for r in s.scalars(stmt)]

    def start_job(self, *, job_id: int, pid: int, host: str) -> JobData:
        """queued -> running, atomically.

        Raises:
            JobConflictError: another job of the tenant is running (the one-running index refused this one).
            JobStateError: the job is not queued.
        """
        now = time.time()
        try:
            with self.transaction() as tx:
                done = rowcount(tx.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "queued")
                                            .values(status="running", pid=pid, host=host, started_at=now,
                                                    heartbeat_at=now).execution_options(synchronize_session=False)))
        except IntegrityError:
            job = self.get_job(job_id=job_id)
            other = [j.id for j in self.jobs(tenant=job.tenant, status="running")]
            raise JobConflictError(f"job {other[0] if other else '?'} is already running on tenant {job.tenant!r}; "
                                   f"job {job_id} stays queued") from None
        job = self.get_job(job_id=job_id)
        if not done:
            raise JobStateError(f"job {job_id} is {job.status}, not queued: only a queued job can start "
                                "(retry makes a new one)")
        return job

    def update_job(self, *, job_id: int, progress: float | None = None, message: str | None = None) -> bool:
        """Write progress and heartbeat of a running job; False if it no longer runs (recovered elsewhere)."""
        values: dict[str, Any] = {"heartbeat_at": time.time()}
        if progress is not None:
            values.update(progress=progress, message=message)
        with self.transaction() as tx:
            return bool(rowcount(tx.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running")
                                             .values(**values).execution_options(synchronize_session=False))))

    def finish_job(self, *, job_id: int, status: str, pid: int, host: str, progress: float,
                   message: str | None, metrics: dict[str, Any] | None = None, error: str | None = None) -> bool:
        """running -> `status`, only if still running under this `pid` and `host`; returns whether it did."""
        if status not in JOB_ENDS:
            raise JobStateError(f"a job finishes one of {', '.join(JOB_ENDS)}, not {status!r}")
        values = dict(status=status, progress=progress, message=message, error=error, finished_at=time.time(),
                      metrics=json.dumps(metrics, default=plain) if metrics is not None else None)
        with self.transaction() as tx:
            return bool(rowcount(tx.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running",
                                                                  JobRow.pid == pid, JobRow.host == host)
                                             .values(**values).execution_options(synchronize_session=False))))

    def fail_lost_job(self, *, job_id: int, heartbeat_at: float | None, error: str) -> bool:
        """running -> failed, only if its heartbeat is still `heartbeat_at` (it did not beat meanwhile)."""
        beat = JobRow.heartbeat_at.is_(None) if heartbeat_at is None else JobRow.heartbeat_at == heartbeat_at
        with self.transaction() as tx:
            return bool(rowcount(tx.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running", beat)
                                             .values(status="failed", error=error, finished_at=time.time())
                                             .execution_options(synchronize_session=False))))
