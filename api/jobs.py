"""The job runner: long work (consolidation) as rows that any process can watch, recover and retry.

A job is queued by `submit`, then `run` in some process: it turns running (pid, host, heartbeat), calls the
work with a `report(progress, message)` callback, and ends succeeded, rejected (the gate said no) or failed.
A job whose process died is found by `recover` (dead pid on this host, or a heartbeat older than the timeout)
and marked failed. The store keeps at most one running job per tenant, atomically.
"""

from __future__ import annotations

import builtins
import logging
import math
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logmem.memory import LogmemError, VectorMemory
from logmem.memory.errors import ConfigError, JobConflictError, JobStateError, NotEnoughDataError
from logmem.memory.store import JobData, Store
from logmem.memory.vocabulary import JOB_RESULTS
from logmem.model.jobs import Report

if TYPE_CHECKING:
    from logmem.model.config import ConsolidationConfig

logger = logging.getLogger(__name__)

KINDS = ("consolidate",)
MIN_NEW_EXPERIENCES = 2  # the fewest a consolidation trains and holds out from (`model.consolidate.consolidate`)

JobFn = Callable[[Report], tuple[str, dict[str, Any]]]
"""The work: gets `report`, returns ("succeeded" | "rejected", metrics)."""


class JobRunner:
    """Submit, run, watch, recover and retry jobs kept in the store.

    Args:
        store: the `Store`, or a `VectorMemory` (its store is used).
        heartbeat_timeout: seconds without a heartbeat after which `recover` declares a running job dead
            (a job on another host can only be judged this way).
        heartbeat_every: seconds between the heartbeats `run` writes while the work runs, reports or not.
        report_every: at most one progress write per this many seconds (the latest values are kept).
    """

    def __init__(self, store: Store | VectorMemory, *, heartbeat_timeout: float = 600.0,
                 heartbeat_every: float = 30.0, report_every: float = 1.0) -> None:
        for name, value in (("heartbeat_timeout", heartbeat_timeout), ("heartbeat_every", heartbeat_every),
                            ("report_every", report_every)):
            if not value > 0:
                raise ConfigError(f"JobRunner.{name} must be > 0, got {value!r}")
        if heartbeat_every >= heartbeat_timeout:
            raise ConfigError(f"JobRunner.heartbeat_every ({heartbeat_every}) must be under heartbeat_timeout "
                              f"({heartbeat_timeout}), or live jobs would be recovered as dead")
        self.store = store.store if isinstance(store, VectorMemory) else store
        self.heartbeat_timeout = heartbeat_timeout
        self.heartbeat_every = heartbeat_every
        self.report_every = report_every
        self.host = socket.gethostname()

    def submit(self, kind: str, tenant: str, params: dict[str, Any] | None = None) -> int:
        """Queue a job; returns its id. `params` must be JSON (they are what `retry` reruns with)."""
        if kind not in KINDS:
            raise JobStateError(f"unknown job kind {kind!r}; expected one of {', '.join(KINDS)}")
        return self.store.add_job(kind=kind, tenant=tenant, params=dict(params or {}))

    def get(self, job_id: int) -> JobData:
        return self.store.get_job(job_id=job_id)

    def list(self, tenant: str | None = None) -> builtins.list[JobData]:
        """Jobs by id, of one tenant or of all."""
        return self.store.jobs(tenant=tenant)

    def retry(self, job_id: int) -> int:
        """Queue a new job with the finished job's kind, tenant and params; the old one keeps its status."""
        job = self.get(job_id)
        if job.status in ("queued", "running"):
            raise JobStateError(f"job {job_id} is {job.status}; only a finished job can be retried")
        return self.store.add_job(kind=job.kind, tenant=job.tenant, params=job.params)

    def run(self, job_id: int, fn: JobFn) -> JobData:
        """Run a queued job in this process and return it finished.

        The work's exception does not propagate: the job ends `failed` with the exception's last traceback line
        as its error (the log gets the whole traceback, or one line for a `LogmemError`: a refusal, not a bug).
        KeyboardInterrupt and SystemExit also mark it failed, then propagate.

        Raises:
            JobConflictError: another job of the tenant is running (checked after `recover`).
            JobStateError: the job is not queued.
        """
        try:
            self.store.start_job(job_id=job_id, pid=os.getpid(), host=self.host)
        except JobConflictError:
            if not self.recover():  # the running one may be a dead process's: recover, then try once more
                raise
            self.store.start_job(job_id=job_id, pid=os.getpid(), host=self.host)
        report = _Reporter(self.store, job_id, self.report_every)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job_id, stop), name=f"logmem-job-{job_id}-heartbeat",
                                daemon=True)
        beat.start()
        status, metrics, error = "failed", None, None
        try:
            status, metrics = _outcome(fn(report))
        except LogmemError as exc:  # refused on purpose (too few experiences, a bad adapter): its message says why
            error = _last_line(exc)
            logger.warning("job %d failed: %s", job_id, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
        except Exception as exc:
            logger.exception("job %d failed", job_id)
            error = _last_line(exc)
        except BaseException as exc:
            error = f"interrupted ({_last_line(exc)})"
            raise
        finally:
            stop.set()
            beat.join()
            self._finish(job_id, status, metrics, error, report)
        return self.get(job_id)

    def recover(self) -> builtins.list[int]:
        """Mark failed every running job whose process is gone: a pid no longer alive on this host, or no
        heartbeat for `heartbeat_timeout` seconds. Returns their ids."""
        now = time.time()
        recovered = []
        for job in self.store.jobs(status="running"):
            dead = job.host == self.host and job.pid is not None and not _alive(job.pid)
            last = job.heartbeat_at or job.started_at or job.created_at
            if not (dead or now - last > self.heartbeat_timeout):
                continue
            when = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
            why = "" if dead else f"; no heartbeat for {now - last:.0f} s"
            error = f"process died while running (recovered at {when} by {self.host}:{os.getpid()}{why})"
            if self.store.fail_lost_job(job_id=job.id, heartbeat_at=job.heartbeat_at, error=error):
                logger.warning("job %d (tenant %r, pid %s on %s): %s", job.id, job.tenant, job.pid, job.host, error)
                recovered.append(job.id)
        return recovered

    def _beat(self, job_id: int, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_every):
            try:
                if not self.store.update_job(job_id=job_id):
                    logger.error("job %d is no longer running in the store (recovered as dead?)", job_id)
                    return
            except Exception:  # a database hiccup must not kill the thread: the next beat may pass
                logger.exception("heartbeat of job %d failed", job_id)

    def _finish(self, job_id: int, status: str, metrics: dict[str, Any] | None, error: str | None,
                report: _Reporter) -> None:
        progress = 1.0 if status != "failed" else report.progress
        if not self.store.finish_job(job_id=job_id, status=status, pid=os.getpid(), host=self.host,
                                     progress=progress, message=report.message, metrics=metrics, error=error):
            logger.error("job %d ended %s here, but the store no longer has it running under this process "
                         "(recovered as dead meanwhile?); its status stays %s", job_id, status,
                         self.get(job_id).status)


class _Reporter:
    """The `report(progress, message)` given to the work: keeps the latest values, writes at most one update
    per `every` seconds (and always the first and a progress of 1)."""

    def __init__(self, store: Store, job_id: int, every: float) -> None:
        self.store, self.job_id, self.every = store, job_id, every
        self.progress: float = 0.0
        self.message: str | None = None
        self._written = float("-inf")
        self._lock = threading.Lock()

    def __call__(self, progress: float, message: str = "") -> None:
        progress = float(progress)
        if math.isnan(progress):
            raise ValueError("job progress is NaN; expected a number in [0, 1]")
        with self._lock:
            self.progress, self.message = min(max(progress, 0.0), 1.0), message
            now = time.monotonic()
            if now - self._written < self.every and self.progress < 1.0:
                return
            self._written = now
            self.store.update_job(job_id=self.job_id, progress=self.progress, message=self.message)


def _outcome(result: Any) -> tuple[str, dict[str, Any]]:
    try:
        status, metrics = result
    except (TypeError, ValueError):
        raise JobStateError(f"the job's work returned {result!r}; expected (status, metrics)") from None
    if status not in JOB_RESULTS:
        raise JobStateError(f"the job's work returned status {status!r}; expected one of {', '.join(JOB_RESULTS)}")
    return status, dict(metrics or {})


def _last_line(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host and is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): trust kill
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def consolidation_job(memory: VectorMemory, model: Any, tokenizer: Any, *, tenant: str, params: dict[str, Any],
                      base_model: str, progress: bool = False) -> JobFn:
    """The work of a `consolidate` job for `run` (`logmem.model.jobs.run_consolidation`)."""
    from logmem.model.jobs import run_consolidation

    def work(report: Report) -> tuple[str, dict[str, Any]]:
        return run_consolidation(memory, model, tokenizer, tenant=tenant, params=params, base_model=base_model,
                                 report=report, progress=progress)

    return work


def check_consolidation(memory: VectorMemory, *, tenant: str, config: ConsolidationConfig) -> None:
    """Refuse, before a job row exists, a consolidation that would fail at once: the tenant has fewer than
    `MIN_NEW_EXPERIENCES` experiences its next adapter would learn from (eligible by `config`'s thresholds and
    not yet covered or held out by the active adapter's lineage, as the job plans them).

    Raises:
        NotEnoughDataError: naming the tenant, how many it has and what to do.
    """
    from logmem.model.lineage import plan_job

    new = len(plan_job(memory, tenant, config).new)
    if new < MIN_NEW_EXPERIENCES:
        raise NotEnoughDataError(f"tenant {tenant!r} has {new} experience(s) to consolidate (new since its active "
                                 f"adapter, utility >= {config.min_utility} and support >= {config.min_support}); "
                                 f"at least {MIN_NEW_EXPERIENCES} are needed: ingest more logs with feedback first")
