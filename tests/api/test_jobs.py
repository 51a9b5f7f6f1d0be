"""The job runner: lifecycle, progress seen from another process's store, failures, crash recovery, retry,
one running job per tenant; and the `jobs` and `adapters` commands."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from logmem.api import cli
from logmem.api.cli import EXIT_ERROR, EXIT_OK, main
from logmem.api.jobs import JobRunner, Report
from logmem.memory import JobConflictError, JobStateError
from logmem.memory.errors import ConfigError
from logmem.memory.store import Store

WAIT = 30.0  # seconds a test waits for a thread or child before it fails


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'memory.db'}"


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = Store(url)
    yield s
    s.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'memory.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_db")
    s = Store(url)
    yield s
    s.close()


class Held:
    """Work that reports once, then waits until released: a job caught in the middle of running."""

    def __init__(self, result: tuple[str, dict[str, Any]] = ("succeeded", {"accuracy": 0.9})) -> None:
        self.reported, self.release, self.result = threading.Event(), threading.Event(), result

    def __call__(self, report: Report) -> tuple[str, dict[str, Any]]:
        report(0.5, "step 40/80 loss 1.23")
        self.reported.set()
        assert self.release.wait(WAIT)
        return self.result


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def test_lifecycle_with_progress_visible_from_another_store(store: Store, url: str) -> None:
    runner = JobRunner(store)
    job_id = runner.submit("consolidate", "acme", {"method": "sft", "epochs": 2})
    assert (runner.get(job_id).status, runner.get(job_id).progress) == ("queued", 0.0)
    work = Held()

    t, out = in_thread(lambda: runner.run(job_id, work))
    assert work.reported.wait(WAIT)
    other = Store(url)  # another process's view: only what was committed
    try:
        mid = other.get_job(job_id=job_id)
        assert (mid.status, mid.progress, mid.message) == ("running", 0.5, "step 40/80 loss 1.23")
        assert (mid.pid, mid.host) == (os.getpid(), socket.gethostname())
        assert mid.started_at is not None and mid.finished_at is None
        work.release.set()
        t.join(WAIT)
        done = other.get_job(job_id=job_id)
    finally:
        other.close()

    assert out[0] == done
    assert (done.status, done.progress, done.metrics, done.error) == ("succeeded", 1.0, {"accuracy": 0.9}, None)
    assert done.params == {"method": "sft", "epochs": 2}
    assert done.finished_at is not None and done.finished_at >= done.started_at  # type: ignore[operator]


def test_a_gate_rejection_ends_rejected(store: Store) -> None:
    runner = JobRunner(store)
    job = runner.run(runner.submit("consolidate", "acme"), lambda report: ("rejected", {"student": 0.4}))
    assert (job.status, job.metrics) == ("rejected", {"student": 0.4})


def test_progress_writes_are_throttled_and_the_last_values_kept(store: Store,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[Any] = []
    real = store.update_job

    def counted(**kw: Any) -> bool:
        writes.append(kw)
        return real(**kw)

    monkeypatch.setattr(store, "update_job", counted)
    runner = JobRunner(store, report_every=60.0)

    def work(report: Report) -> tuple[str, dict[str, Any]]:
        for step in range(1, 201):
            report(step / 400, f"step {step}/400")
        return "failed?", {}  # not a valid outcome: the job fails, keeping the last progress it reported

    job = runner.run(runner.submit("consolidate", "acme"), work)

    assert len(writes) == 1  # the first report; the other 199 came within the minute
    assert (job.status, job.progress, job.message) == ("failed", 0.5, "step 200/400")
    assert job.error is not None and "returned status 'failed?'" in job.error


def test_an_exception_marks_the_job_failed_and_is_not_raised(store: Store) -> None:
    runner = JobRunner(store)

    def work(report: Report) -> tuple[str, dict[str, Any]]:
        report(0.25, "loading the model")
        raise ValueError("the base model is missing")

    job = runner.run(runner.submit("consolidate", "acme"), work)

    assert (job.status, job.error, job.progress) == ("failed", "ValueError: the base model is missing", 0.25)
    assert job.finished_at is not None and job.metrics is None


@pytest.mark.parametrize(("error", "traceback"), [(ConfigError("tenant 'acme' has 1 experience(s)"), False),
                                                  (ZeroDivisionError("a bug"), True)])
def test_a_refusal_is_logged_in_one_line_a_bug_with_its_traceback(store: Store, caplog: pytest.LogCaptureFixture,
                                                                   error: Exception, traceback: bool) -> None:
    runner = JobRunner(store)

    def work(report: Report) -> tuple[str, dict[str, Any]]:
        raise error

    with caplog.at_level(logging.INFO, logger="logmem.api.jobs"):
        job = runner.run(runner.submit("consolidate", "acme"), work)

    assert job.status == "failed" and str(error) in (job.error or "")  # the row says why, either way
    (record,) = [r for r in caplog.records if r.name == "logmem.api.jobs"]
    assert (record.levelno, bool(record.exc_info)) == ((logging.ERROR, True) if traceback else
                                                            (logging.WARNING, False))


def test_an_interrupt_marks_the_job_failed_and_propagates(store: Store) -> None:
    runner = JobRunner(store)
    job_id = runner.submit("consolidate", "acme")

    def work(report: Report) -> tuple[str, dict[str, Any]]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(job_id, work)
    assert (runner.get(job_id).status, runner.get(job_id).error) == ("failed", "interrupted (KeyboardInterrupt)")


def test_only_a_queued_job_runs_and_only_a_finished_one_is_retried(store: Store) -> None:
    runner = JobRunner(store)
    job_id = runner.submit("consolidate", "acme", {"method": "kd"})
    with pytest.raises(JobStateError, match=f"job {job_id} is queued; only a finished job can be retried"):
        runner.retry(job_id)
    runner.run(job_id, lambda report: ("succeeded", {}))
    with pytest.raises(JobStateError, match=f"job {job_id} is succeeded, not queued"):
        runner.run(job_id, lambda report: ("succeeded", {}))
    with pytest.raises(JobStateError, match="unknown job kind 'train'"):
        runner.submit("train", "acme")


CHILD = """
import sys, time
from logmem.api.jobs import JobRunner
from logmem.memory.store import Store

def work(report):
    report(0.3, "step 3/10")
    print("running", flush=True)
    time.sleep(120)
    return "succeeded", {}

JobRunner(Store(sys.argv[1])).run(int(sys.argv[2]), work)
"""


def test_a_job_whose_process_was_killed_is_recovered_as_failed_and_retried(store: Store, url: str) -> None:
    runner = JobRunner(store)
    job_id = runner.submit("consolidate", "acme", {"method": "sft", "max_steps": 10})
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, str(job_id)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "running"
        assert runner.recover() == []  # alive: left alone
        assert runner.get(job_id).status == "running"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)

    assert runner.get(job_id).status == "running"  # nobody could write anything at SIGKILL
    assert runner.recover() == [job_id]
    dead = runner.get(job_id)
    assert dead.status == "failed" and dead.pid == child.pid
    assert dead.error is not None and dead.error.startswith("process died while running (recovered at ")
    assert (dead.progress, dead.message) == (0.3, "step 3/10")

    again = runner.retry(job_id)
    assert again != job_id
    fresh = runner.get(again)
    assert (fresh.status, fresh.kind, fresh.tenant, fresh.params) == ("queued", "consolidate", "acme",
                                                                      {"method": "sft", "max_steps": 10})
    assert runner.get(job_id).status == "failed"
    assert runner.run(again, lambda report: ("succeeded", {})).status == "succeeded"


def test_run_recovers_a_dead_job_that_holds_the_tenant(store: Store) -> None:
    runner = JobRunner(store)
    stuck = runner.submit("consolidate", "acme")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(WAIT)
    store.start_job(job_id=stuck, pid=dead.pid, host=runner.host)  # as a process that then died

    job = runner.run(runner.submit("consolidate", "acme"), lambda report: ("succeeded", {}))

    assert job.status == "succeeded"
    assert runner.get(stuck).status == "failed"


def test_a_silent_job_is_recovered_after_the_heartbeat_timeout(store: Store) -> None:
    runner = JobRunner(store, heartbeat_timeout=0.3, heartbeat_every=0.1)
    elsewhere = runner.submit("consolidate", "acme")
    store.start_job(job_id=elsewhere, pid=os.getpid(), host="another-host")  # its pid means nothing here

    assert runner.recover() == []
    time.sleep(0.5)
    assert runner.recover() == [elsewhere]
    assert "no heartbeat for" in (runner.get(elsewhere).error or "")


def test_the_heartbeat_keeps_a_quiet_live_job_from_being_recovered(store: Store) -> None:
    runner = JobRunner(store, heartbeat_timeout=0.4, heartbeat_every=0.05)
    watcher = JobRunner(store, heartbeat_timeout=0.4, heartbeat_every=0.05)
    recovered: list[int] = []

    def quiet(report: Report) -> tuple[str, dict[str, Any]]:
        for _ in range(10):  # 1 s without a single report, well past the timeout
            time.sleep(0.1)
            recovered.extend(watcher.recover())
        return "succeeded", {}

    job = runner.run(runner.submit("consolidate", "acme"), quiet)
    assert (recovered, job.status) == ([], "succeeded")


def test_a_second_job_on_a_busy_tenant_is_refused_while_others_run(any_store: Store) -> None:
    runner = JobRunner(any_store)
    first, second = runner.submit("consolidate", "acme"), runner.submit("consolidate", "acme")
    other = runner.submit("consolidate", "globex")
    work = Held()
    t, out = in_thread(lambda: runner.run(first, work))
    try:
        assert work.reported.wait(WAIT)
        with pytest.raises(JobConflictError, match=f"job {first} is already running on tenant 'acme'"):
            runner.run(second, lambda report: ("succeeded", {}))
        assert runner.get(second).status == "queued"
        assert runner.run(other, lambda report: ("succeeded", {})).status == "succeeded"  # another tenant
    finally:
        work.release.set()
        t.join(WAIT)
    assert out[0].status == "succeeded"
    assert runner.run(second, lambda report: ("succeeded", {})).status == "succeeded"  # the tenant is free


def test_simultaneous_starts_on_one_tenant_let_exactly_one_through(any_store: Store) -> None:
    ids = [any_store.add_job(kind="consolidate", tenant="acme", params={}) for _ in range(6)]
    start = threading.Barrier(len(ids))
    outcomes: list[str] = []

    def go(job_id: int) -> None:
        start.wait()
        try:
            any_store.start_job(job_id=job_id, pid=os.getpid(), host="h")
            outcomes.append("started")
        except JobConflictError:
            outcomes.append("refused")

    threads = [threading.Thread(target=go, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)

    assert sorted(outcomes) == ["refused"] * 5 + ["started"]
    assert len(any_store.jobs(tenant="acme", status="running")) == 1


# --- CLI ------------------------------------------------------------------------------------
def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Store]]:
    """A home with a memory.db; the commands must not load the embedder to read it."""
    monkeypatch.setattr(cli, "_runtime", lambda *a, **k: pytest.fail("jobs/adapters loaded the embedder"))
    h = tmp_path / "home"
    h.mkdir()
    s = Store(f"sqlite:///{h / 'memory.db'}")
    yield str(h), s
    s.close()


def test_cli_jobs_lists_and_shows(home: tuple[str, Store], capsys: pytest.CaptureFixture[str]) -> None:
    h, store = home
    runner = JobRunner(store)
    ok = runner.run(runner.submit("consolidate", "acme", {"method": "sft"}), lambda r: ("succeeded", {"acc": 0.8}))
    bad = runner.run(runner.submit("consolidate", "globex"), lambda r: 1 / 0)

    code, out, _ = run(capsys, "--home", h, "jobs", "--json")
    assert code == EXIT_OK
    assert [(j["id"], j["status"]) for j in json.loads(out)["jobs"]] == [(ok.id, "succeeded"), (bad.id, "failed")]

    code, out, _ = run(capsys, "--home", h, "jobs", "--tenant", "globex")
    assert code == EXIT_OK and "ZeroDivisionError: division by zero" in out and "acme" not in out

    code, out, _ = run(capsys, "--home", h, "jobs", str(ok.id), "--json")
    assert (json.loads(out)["metrics"], json.loads(out)["params"]) == ({"acc": 0.8}, {"method": "sft"})

    code, _, err = run(capsys, "--home", h, "jobs", "99")
    assert code == EXIT_ERROR and "no job 99" in err


def test_cli_adapters_list_activate_rollback(home: tuple[str, Store], capsys: pytest.CaptureFixture[str]) -> None:
    h, store = home
    common: dict[str, Any] = dict(base_model="m", method="sft", seed=0, metrics={"student": 0.7}, path="/a")
    v1 = store.add_adapter(tenant="acme", status="promoted", covered=[1, 2], **common)
    v2 = store.add_adapter(tenant="acme", status="promoted", covered=[3], **common)
    bad = store.add_adapter(tenant="acme", status="rejected", covered=[], **common)
    g1 = store.add_adapter(tenant="globex", status="promoted", covered=[], **common)

    code, out, _ = run(capsys, "--home", h, "adapters", "activate", v1)  # the tenant is the adapter's own
    assert (code, out.strip()) == (EXIT_OK, f"acme: {v1} active")
    code, out, _ = run(capsys, "--home", h, "adapters", "activate", v2, "--tenant", "acme", "--json")
    assert json.loads(out) == {"tenant": "acme", "active": v2, "was": v1}
    code, _, err = run(capsys, "--home", h, "adapters", "activate", bad)
    assert code == EXIT_ERROR and f"adapter {bad} was rejected by the gate" in err
    code, _, err = run(capsys, "--home", h, "adapters", "activate", g1, "--tenant", "acme")
    assert code == EXIT_ERROR and f"no adapter '{g1}' in tenant 'acme'" in err

    code, out, _ = run(capsys, "--home", h, "adapters", "--tenant", "acme", "--json")
    listed = json.loads(out)["adapters"]
    assert [(a["version"], a["active"], a["covered"]) for a in listed] == \
        [(v1, False, 2), (v2, True, 1), (bad, False, 0)]
    code, out, _ = run(capsys, "--home", h, "adapters")
    assert code == EXIT_OK and "globex" in out and "rejected" in out

    code, out, _ = run(capsys, "--home", h, "adapters", "--tenant", "acme", "rollback")
    assert out.strip() == f"acme: {v1} active (was {v2})"
    code, out, _ = run(capsys, "--home", h, "adapters", "rollback", "--tenant", "acme", "--json")
    assert json.loads(out) == {"tenant": "acme", "active": None, "was": v1}
    code, out, _ = run(capsys, "--home", h, "adapters", "rollback")  # tenant 'default': nothing to undo
    assert (code, out.strip()) == (EXIT_OK, "default: base model (no adapter active) (unchanged)")


def test_cli_on_a_home_without_a_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--home", str(tmp_path / "nothing"), "adapters")
    assert code == EXIT_ERROR and "no memory in" in err
    assert not (tmp_path / "nothing").exists()
