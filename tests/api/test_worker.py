"""Jobs outside the request: the periodic policy queues consolidations by itself, a worker claims and runs
them; `logmem keys` manages the service's keys."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from logmem.api.cli import EXIT_OK, EXIT_USAGE, main
from logmem.api.runtime import Caller
from logmem.memory.store import Store

THINGS = ["sky", "sea", "lake", "sapphire", "bluebell", "jeans", "ocean", "iris", "cornflower", "lapis"]


def liked(i: int, thing: str) -> dict[str, Any]:
    return {"id": f"c{i}", "user": f"u{i}", "messages": [
        {"role": "user", "content": f"Which colour is the {thing}?"}, {"role": "assistant", "content": "BLUE"}],
        "feedback": [{"turn": 1, "kind": "like"}]}


def test_the_policy_queues_after_n_new_experiences_once(tmp_path: Path, runtime_for: Any) -> None:
    runtime = runtime_for(tmp_path / "h", consolidate_after=4, consolidate_params={"epochs": 1})
    runtime.ingest([liked(i, t) for i, t in enumerate(THINGS[:3])], tenant="acme")
    assert runtime.queue_due() == []  # 3 new: not yet
    runtime.ingest([liked(3, THINGS[3])], tenant="acme")
    (job_id,) = runtime.queue_due()
    job = runtime.store.get_job(job_id=job_id)
    assert (job.tenant, job.status, job.params["epochs"]) == ("acme", "queued", 1)
    assert runtime.queue_due() == []  # one queued already
    runtime.store.start_job(job_id=job_id, pid=1, host="elsewhere")
    runtime.store.finish_job(job_id=job_id, status="rejected", pid=1, host="elsewhere", progress=1.0, message=None)
    assert runtime.queue_due() == []  # nothing new since that job was queued
    runtime.ingest([liked(i, t) for i, t in enumerate(THINGS[4:8], start=4)], tenant="acme")
    assert len(runtime.queue_due()) == 1


def test_the_policy_waits_while_the_tenants_canary_is_live(tmp_path: Path, runtime_for: Any) -> None:
    runtime = runtime_for(tmp_path / "h", consolidate_after=2)
    runtime.ingest([liked(i, t) for i, t in enumerate(THINGS[:4])], tenant="acme")
    version = runtime.store.add_adapter(tenant="acme", base_model="tiny", method="sft", seed=0, status="promoted",
                                        metrics={}, covered=[], path=str(tmp_path / "nowhere"))
    runtime.memory.canaries.start(version, tenant="acme", share=0.1)
    assert runtime.queue_due() == []  # its users have not judged the last adapter yet
    runtime.memory.canaries.stop("acme")
    assert len(runtime.queue_due()) == 1


def test_the_policy_queues_every_h_hours_only_with_something_new(tmp_path: Path, runtime_for: Any) -> None:
    runtime = runtime_for(tmp_path / "h", consolidate_every_hours=24)
    assert runtime.queue_due() == []  # nothing learned at all
    runtime.ingest([liked(0, "sky")], tenant="acme")
    (first,) = runtime.queue_due()
    created = runtime.store.get_job(job_id=first).created_at
    runtime.store.start_job(job_id=first, pid=1, host="elsewhere")
    runtime.store.finish_job(job_id=first, status="succeeded", pid=1, host="elsewhere", progress=1.0, message=None)
    runtime.ingest([liked(1, "sea")], tenant="acme")
    assert runtime.queue_due(now=created + 3600) == []  # too soon
    assert len(runtime.queue_due(now=created + 25 * 3600)) == 1


def test_a_worker_runs_what_the_service_queued(tmp_path: Path, runtime_for: Any) -> None:
    runtime = runtime_for(tmp_path / "h")
    runtime.ingest([liked(i, t) for i, t in enumerate(THINGS)], tenant="acme")
    queued = runtime.submit_consolidation(Caller("acme", None), {"epochs": 2, "lr": 3e-2, "holdout": 0.25,
                                                                  "probe_bound": 10.0})
    assert queued.status == "queued"
    assert runtime.work(threading.Event(), once=True) == 1
    job = runtime.store.get_job(job_id=queued.id)
    assert job.status in ("succeeded", "rejected") and "gate" in job.metrics
    assert runtime.work(threading.Event(), once=True) == 0  # nothing left


def test_bad_consolidation_params_fail_at_submission(tmp_path: Path, runtime_for: Any) -> None:
    runtime = runtime_for(tmp_path / "h")
    with pytest.raises(ValueError, match="epochs"):
        runtime.submit_consolidation(Caller("acme", None), {"epochs": 0})
    with pytest.raises(ValueError, match="nope"):
        runtime.submit_consolidation(Caller("acme", None), {"nope": 1})
    assert runtime.store.jobs() == []


def test_cli_keys_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(tmp_path / "h")]
    assert main([*home, "keys", "create", "--tenant", "acme", "--name", "web"]) == EXIT_OK
    key = capsys.readouterr().out.strip().splitlines()[-1]
    store = Store(f"sqlite:///{tmp_path / 'h' / 'memory.db'}")
    try:
        found = store.key_for(key)
        assert found is not None and (found.tenant, found.name, found.admin) == ("acme", "web", False)
        assert main([*home, "keys", "list", "--json"]) == EXIT_OK
        listed = json.loads(capsys.readouterr().out)["keys"]
        assert [k["tenant"] for k in listed] == ["acme"] and key not in json.dumps(listed)
        assert main([*home, "keys", "revoke", str(found.id)]) == EXIT_OK
        assert store.key_for(key) is None
        assert main([*home, "keys", "create"]) == EXIT_USAGE
        capsys.readouterr()
        assert main([*home, "keys", "create", "--admin", "--json"]) == EXIT_OK
        admin = json.loads(capsys.readouterr().out)
        assert admin["admin"] is True and admin["tenant"] is None and store.key_for(admin["key"]) is not None
    finally:
        store.close()
