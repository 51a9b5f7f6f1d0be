"""The work of a consolidation job: train, gate, save the adapter, register it, and when the gate promotes it,
activate it and mark the experiences it covers. Where and when a job runs is the job runner's (`logmem.api.jobs`)."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from logmem.memory import VectorMemory
from logmem.memory.vocabulary import tenant_key

from .config import ConsolidationConfig
from .progress import Report

__all__ = ["Report", "run_consolidation", "tenant_key"]

logger = logging.getLogger(__name__)


def run_consolidation(memory: VectorMemory, model: Any, tokenizer: Any, *, tenant: str, params: dict[str, Any],
                      base_model: str, report: Report | None = None,
                      progress: bool = False) -> tuple[str, dict[str, Any]]:
    """Consolidate the tenant's memory into a LoRA adapter with `ConsolidationConfig(**params)`.

    The adapter is registered with its lineage (the adapter it was trained on from, the experiences this job
    taught, those its gate held out). The serving mode the job measured best is recorded for the tenant
    (`model/modes.py`). Returns ("succeeded" | "rejected", metrics): the gate's figures (the forgetting check's
    and the modes' included), the adapter `version` and the held-out ids.
    """
    from .consolidate import consolidate

    config = ConsolidationConfig(**params)
    outcome = consolidate(model, tokenizer, memory, tenant=tenant, config=config, report=report, progress=progress)
    folder = memory.home / "adapters" / f"{tenant_key(tenant)}-{int(time.time())}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    outcome.adapter.save_pretrained(str(folder))
    version = memory.register_adapter(tenant=tenant, base_model=base_model, method=config.method, seed=config.seed,
                                      promoted=outcome.promoted, metrics=outcome.metrics, covered=outcome.covered,
                                      path=str(folder), parent=outcome.parent, holdout=outcome.holdout)
    if outcome.promoted:
        memory.activate_adapter(version, tenant=tenant)
        memory.mark_consolidated(outcome.covered, version=version, tenant=tenant)
        if outcome.erase:  # the stale adapters' weights hold forgotten experiences: erase them too
            for old in memory.adapters(tenant):
                if old.status == "stale" and Path(old.path).exists():
                    shutil.rmtree(old.path)
                    logger.info("deleted the weights of stale adapter %s (%s)", old.version, old.path)
    serving = outcome.metrics.get("serving")
    if serving:  # the mode measured best, with the adapter that is active now (this one when promoted)
        active = memory.active_adapter(tenant)
        memory.record_serving_mode(tenant=tenant, mode=serving["mode"], metric=serving["metric"],
                                   adapter=active.version if active is not None else None,
                                   figures=serving["figures"], reason=serving["reason"], job_version=version)
        logger.info("tenant %r is served %s from now on (%s)", tenant, serving["mode"], serving["reason"])
    metrics = {**outcome.metrics, "version": version, "holdout_ids": outcome.holdout}
    return ("succeeded" if outcome.promoted else "rejected"), metrics
