"""The work of a consolidation job: train, gate, save the adapter, register it, and when the gate promotes it,
activate it and mark the experiences it covers (or, with `canary_share`, start it as the tenant's canary). Where and
when a job runs is the job runner's (`logmem.api.jobs`)."""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from logmem.memory import VectorMemory
from logmem.memory.vocabulary import ADAPTER_MODES, tenant_key

from .config import ConsolidationConfig
from .heap import kept_heap
from .lineage import plan_job
from .progress import Report
from .slices import choose_serving

__all__ = ["Report", "run_consolidation", "tenant_key"]

logger = logging.getLogger(__name__)


def run_consolidation(memory: VectorMemory, model: Any, tokenizer: Any, *, tenant: str, params: dict[str, Any],
                      base_model: str, report: Report | None = None,
                      progress: bool = False) -> tuple[str, dict[str, Any]]:
    """Consolidate the tenant's memory into a LoRA adapter with `ConsolidationConfig(**params)`.

    The adapter is registered with its lineage (the adapter it was trained on from, the experiences this job
    taught, those its gate held out). The serving mode is chosen over the job's held-out slice and every live
    earlier slice of the lineage (`model/slices.py`) and recorded for the tenant; a promoted adapter none of whose
    modes keeps the earlier slices' served figures is refused. Returns ("succeeded" | "rejected", metrics): the
    gate's figures (the forgetting check's and the modes' included, `serving.slices` each slice's figure per
    mode), the adapter `version` and the held-out ids. Memory freed while it trains and reads stays in the process
    until it ends (`heap.kept_heap`).
    """
    with kept_heap():
        return _consolidation(memory, model, tokenizer, tenant=tenant, params=params, base_model=base_model,
                              report=report, progress=progress)


def _consolidation(memory: VectorMemory, model: Any, tokenizer: Any, *, tenant: str, params: dict[str, Any],
                   base_model: str, report: Report | None, progress: bool) -> tuple[str, dict[str, Any]]:
    from .consolidate import consolidate

    config = ConsolidationConfig(**params)
    before = memory.active_adapter(tenant)
    earlier = plan_job(memory, tenant, config).slices  # the lineage's live held-out slices (what consolidate plans)
    outcome = consolidate(model, tokenizer, memory, tenant=tenant, config=config, report=report, progress=progress)
    promoted = outcome.promoted
    serving = outcome.metrics.get("serving")
    if serving:
        choice, promoted = choose_serving(memory, outcome.adapter, tokenizer, tenant, serving, earlier=earlier,
                                          holdout=outcome.holdout, active=before, promoted=promoted, config=config,
                                          progress=progress)
        serving.update(newest_slice_mode=serving["mode"], mode=choice["mode"], figures=choice["combined"],
                       reason=choice["reason"], slices=choice.pop("slices"), choice=choice)
        if promoted != outcome.promoted:
            outcome.metrics["gate"] = f"{outcome.metrics['gate']}; refused by the serving choice: " \
                                      f"{choice['refused_adapter']}"
    folder = memory.home / "adapters" / f"{tenant_key(tenant)}-{int(time.time())}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    outcome.adapter.save_pretrained(str(folder))
    version = memory.register_adapter(tenant=tenant, base_model=base_model, method=config.method, seed=config.seed,
                                      promoted=promoted, metrics=outcome.metrics, covered=outcome.covered,
                                      path=str(folder), parent=outcome.parent, holdout=outcome.holdout)
    mode = serving["mode"] if serving else None
    if promoted and config.canary_share > 0 and mode in (None, *ADAPTER_MODES):  # the users judge it on a share first
        canary = memory.canaries.start(version, tenant=tenant, share=config.canary_share, mode=mode)
        outcome.metrics["canary"] = {"id": canary.id, "share": canary.share, "mode": canary.mode}
    elif promoted:
        memory.promote_adapter(version, tenant=tenant)  # active, its experiences marked, served as measured
        if outcome.erase:  # the stale adapters' weights hold forgotten experiences: erase them too
            for old in memory.adapters(tenant):
                if old.status == "stale":
                    memory.erase_adapter_weights(old.version, tenant=tenant)
    elif serving:  # the mode measured best, with the adapter that stays active
        memory.record_serving_mode(tenant=tenant, mode=serving["mode"], metric=serving["metric"],
                                   adapter=before.version if before is not None else None,
                                   figures=serving["figures"], reason=serving["reason"], job_version=version)
    if serving and not outcome.metrics.get("canary"):
        logger.info("tenant %r is served %s from now on (%s)", tenant, serving["mode"], serving["reason"])
    metrics = {**outcome.metrics, "version": version, "holdout_ids": outcome.holdout}
    return ("succeeded" if promoted else "rejected"), metrics
