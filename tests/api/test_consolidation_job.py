"""A consolidation job end to end on a tiny model: train, gate, save, register, activate, mark, forget."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from logmem.api.jobs import JobRunner, consolidation_job
from logmem.memory import VectorMemory
from logmem.model.loading import load_adapter

THINGS = ["sky", "sea", "lake", "sapphire", "bluebell", "jeans", "ocean", "iris", "cornflower", "lapis",
          "denim", "cobalt", "navy flag", "blue whale", "smurf", "blueberry"]


@pytest.fixture()
def memory(tmp_path: Path, embedder) -> VectorMemory:  # type: ignore[no-untyped-def]
    mem = VectorMemory(tmp_path / "home", embedder=embedder)
    mem.ingest([{"id": f"c{i}", "user": f"u{i}", "messages": [
        {"role": "user", "content": f"Which colour is the {t}?"}, {"role": "assistant", "content": "BLUE"}],
        "feedback": [{"turn": 1, "kind": "like"}]} for i, t in enumerate(THINGS)])
    yield mem
    mem.close()


def _run(memory: VectorMemory, tiny_lm, **params):  # type: ignore[no-untyped-def]
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    runner = JobRunner(memory)
    job_id = runner.submit("consolidate", "default", params)
    work = consolidation_job(memory, model, tok, tenant="default", params=params, base_model="tiny")
    return runner.run(job_id, work), model


def test_a_promoted_adapter_is_saved_activated_and_covers_its_experiences(memory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    job, trained = _run(memory, tiny_lm, lr=3e-2, epochs=15, batch_size=4, holdout=0.25, probe_bound=10.0,
                        gate_reference="base")  # the vote answers these one-answer logs perfectly: no adapter beats it
    assert job.status == "succeeded", job.error or job.metrics["gate"]
    version = job.metrics["version"]
    active = memory.active_adapter("default")
    assert active is not None and active.version == version and active.status == "promoted"
    assert (Path(active.path) / "adapter_config.json").is_file()
    covered = set(active.covered)
    assert len(covered) == 12
    consolidated = {e.id for e in memory.store.iter_experiences(tenant="default") if e.consolidated_in == version}
    assert consolidated == covered
    assert memory.stats().consolidated_share == pytest.approx(12 / 16)
    # the saved adapter reproduces the trained one
    fresh = load_adapter(copy.deepcopy(tiny_lm[0]), active.path)
    ids = tiny_lm[1]("Which colour is the sky?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(fresh(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-5)
    # erasure reaches the weights: forgetting a covered experience marks the adapter stale
    memory.forget(id=sorted(covered)[0])
    assert memory.store.get_adapter(version=version).status == "stale"


def test_a_rejected_adapter_is_kept_for_inspection_but_not_activated(memory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    job, _ = _run(memory, tiny_lm, lr=0.0, max_steps=1, batch_size=4, holdout=0.25)
    assert job.status == "rejected"
    (adapter,) = memory.adapters("default")
    assert adapter.status == "rejected" and not adapter.active
    assert "does not beat the served mode vote" in adapter.metrics["gate"]
    assert (Path(adapter.path) / "adapter_config.json").is_file()
    assert memory.active_adapter("default") is None
    assert all(e.consolidated_in is None for e in memory.store.iter_experiences(tenant="default"))


def test_bad_parameters_fail_the_job_with_the_reason(memory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    runner = JobRunner(memory)
    job_id = runner.submit("consolidate", "default", {"method": "dpo"})
    job = runner.run(job_id, lambda report: consolidation_job(memory, tiny_lm[0], tiny_lm[1], tenant="default",
                                                              params={"method": "dpo"}, base_model="tiny")(report))
    assert job.status == "failed" and "method must be one of" in (job.error or "")


def test_rebuild_after_forgetting_leaves_the_forgotten_experience_out(memory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    params = dict(lr=3e-2, epochs=15, batch_size=4, holdout=0.25, probe_bound=10.0, gate_reference="base")
    first, _ = _run(memory, tiny_lm, **params)
    old = memory.store.get_adapter(version=first.metrics["version"])
    forgotten = sorted(old.covered)[0]
    memory.forget(id=forgotten)
    assert memory.store.get_adapter(version=old.version).status == "stale"

    second, _ = _run(memory, tiny_lm, **params, rebuild=True)
    assert second.status == "succeeded", second.metrics["gate"]
    new = memory.active_adapter("default")
    assert new is not None and new.version == second.metrics["version"] != old.version
    seen = set(new.covered) | set(second.metrics["holdout_ids"])
    assert forgotten not in seen
    assert seen == {e.id for e in memory.store.iter_experiences(tenant="default")}  # all that remain
    assert not Path(old.path).exists()  # the weights that held the forgotten experience are gone


def test_with_a_canary_share_a_promoted_adapter_starts_as_the_canary(memory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    job, _ = _run(memory, tiny_lm, lr=3e-2, epochs=15, batch_size=4, holdout=0.25, probe_bound=10.0,
                  gate_reference="base", canary_share=0.25)
    assert job.status == "succeeded", job.error or job.metrics["gate"]
    version, mode = job.metrics["version"], "memory+adapter"  # no mode measured (gate_reference base): the adapter's
    canary = memory.canaries.live("default")
    assert canary is not None and (canary.version, canary.share, canary.mode) == (version, 0.25, mode)
    assert job.metrics["canary"] == {"id": canary.id, "share": 0.25, "mode": mode}
    assert memory.active_adapter("default") is None  # the current arm keeps serving the rest
    assert all(e.consolidated_in is None for e in memory.store.iter_experiences(tenant="default"))
    memory.canaries.promote("default")  # what the users' outcomes (or an operator) decide applies the job's choice
    assert memory.active_adapter("default").version == version
    assert len([e for e in memory.store.iter_experiences(tenant="default") if e.consolidated_in == version]) == 12
