"""The runtime's consolidation: jobs submitted, run in this process, and queued by the settings' policy; the job
worker."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from logmem.memory import NotFoundError
from logmem.memory.errors import ConfigError, JobConflictError, JobStateError, LogmemError
from logmem.memory.store import JobData

from ..answering import Caller
from ..jobs import check_consolidation, consolidation_job
from .admin import Admin

logger = logging.getLogger(__name__)

POLICY_MARK = "_policy_last_id"  # in a policy job's params: the newest experience id when it was queued


class Consolidation(Admin):
    """Consolidation jobs: submitted, run here, queued by the policy; the job worker."""

    def submit_consolidation(self, caller: Caller, params: dict[str, Any]) -> JobData:
        """Queue a consolidation job (checked first: bad params, or too few experiences to learn from, fail here
        and leave no job row, rather than fail in the worker)."""
        from logmem.model.config import ConsolidationConfig

        try:
            config = ConsolidationConfig(**params)
        except TypeError as exc:
            raise ConfigError(f"consolidation params: {exc}") from None
        check_consolidation(self.memory, tenant=caller.tenant, config=config)
        return self.jobs.get(self.jobs.submit("consolidate", caller.tenant, params))

    def job(self, caller: Caller | None, job_id: int) -> JobData:
        """One of the caller's jobs (None: the operator's, of any tenant); another tenant's is a NotFoundError."""
        job = self.jobs.get(job_id)
        if caller is not None and job.tenant != caller.tenant:
            raise NotFoundError(f"no job {job_id}")
        return job

    def job_list(self, caller: Caller | None) -> list[JobData]:
        """The caller's jobs (None: every tenant's), oldest first."""
        return self.jobs.list(caller.tenant if caller else None)

    def recover_jobs(self) -> None:
        """Mark failed the running jobs whose process died (a dead process's running job would hold its tenant)."""
        self.jobs.recover()

    def run_job(self, job_id: int, *, progress: bool = False) -> JobData:
        """Run a queued job in this process, on a fresh float32 copy of the model."""
        job = self.jobs.get(job_id)
        params = {k: v for k, v in job.params.items() if not k.startswith("_")}  # "_..." are the runner's notes
        model, tokenizer = self._load_trainer() if self._load_trainer else self._load_settings_model("float32")
        work = consolidation_job(self.memory, model, tokenizer, tenant=job.tenant, params=params,
                                 base_model=self.base_model, progress=progress)
        done = self.jobs.run(job_id, work)
        if done.status == "succeeded" and self.settings.push_to:  # promoted: active now, pushed as an activation is
            from .. import push

            try:
                push.push(self.store, job.tenant, **self._push_target())
            except LogmemError as exc:  # the tenant's requests get the base model until a push succeeds
                logger.error("job %d: adapter of tenant %r not pushed to %s: %s", job_id, job.tenant,
                             self.settings.push_to, exc)
            self._pushed()
        return done

    def run_next_job(self) -> JobData | None:
        """Claim and run the oldest queued job whose tenant has none running; None when there is none."""
        self.jobs.recover()
        for job in self.store.jobs(status="queued"):
            try:
                return self.run_job(job.id)
            except (JobConflictError, JobStateError):
                continue  # its tenant is busy, or another worker took it first
        return None

    def work(self, stop: threading.Event, *, once: bool = False) -> int:
        """The job worker: queue the policy's due jobs, run queued ones one at a time, and poll every
        `worker_poll_seconds` until `stop` is set (with `once`: until nothing is left to run). Returns how many
        jobs it ran."""
        ran = 0
        while not stop.is_set():
            try:
                self.queue_due()
                if self.run_next_job() is not None:
                    ran += 1
                    continue
            except Exception:  # a failed poll must not end the worker: the next may pass
                logger.exception("the job worker's poll failed")
            if once:
                break
            stop.wait(self.settings.worker_poll_seconds)
        return ran

    def queue_due(self, now: float | None = None) -> list[int]:
        """Queue the consolidation jobs the settings' policy asks for; returns their ids.

        A tenant is due when it has no job queued or running and it learned `consolidate_after` experiences
        since its last policy job, or learned any and its last job is `consolidate_every_hours` old. A tenant whose
        last adapter is still its live canary waits until its users' outcomes decide."""
        s, now = self.settings, time.time() if now is None else now
        if not (s.consolidate_after or s.consolidate_every_hours):
            return []
        queued = []
        for tenant in self.store.tenants():
            jobs = self.store.jobs(tenant=tenant)
            if any(j.status in ("queued", "running") for j in jobs) or self.memory.canaries.live(tenant) is not None:
                continue
            last = next((j for j in reversed(jobs) if POLICY_MARK in j.params), None)
            new, newest = self.store.experiences_after(tenant=tenant, after_id=last.params[POLICY_MARK] if last else 0)
            old = last is None or now - last.created_at >= s.consolidate_every_hours * 3600
            if (s.consolidate_after and new >= s.consolidate_after) or (s.consolidate_every_hours and new > 0 and old):
                queued.append(self.jobs.submit("consolidate", tenant, {**s.consolidate_params, POLICY_MARK: newest}))
                logger.info("queued consolidation job %d for tenant %r (%d new experiences)", queued[-1], tenant, new)
        return queued
