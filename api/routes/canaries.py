"""`/v1/canaries`: the caller's canary adapters (each arm's rated conversations and good-outcome rate, the e-values
against their thresholds, the verdict) and an operator's promote, stop and pin of its live one. Any key of the tenant
may, as it may activate its adapters; 404 when the tenant has no live canary."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..deps import CallerDep, RuntimeDep
from ..schemas import CanaryOut, CanaryPinIn, ErrorOut

router = APIRouter(prefix="/v1/canaries", tags=["consolidation"])
NO_CANARY: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "the tenant has no live canary"}}


@router.get("", response_model=list[CanaryOut])
def list_canaries(runtime: RuntimeDep, caller: CallerDep) -> Any:
    """The caller's canaries, newest first; the live one's decision is what its outcomes decide now."""
    return [c.to_json() for c in runtime.canaries(caller)]


@router.post("/promote", response_model=CanaryOut, responses=NO_CANARY)
def promote(runtime: RuntimeDep, caller: CallerDep) -> Any:
    """Promote the live canary now: its adapter answers every conversation (pushed first where the service pushes
    its adapters to a serving server)."""
    return runtime.promote_canary(caller).to_json()


@router.post("/stop", response_model=CanaryOut, responses=NO_CANARY)
def stop(runtime: RuntimeDep, caller: CallerDep) -> Any:
    """End the live canary: the current adapter answers every conversation again."""
    return runtime.stop_canary(caller).to_json()


@router.post("/pin", response_model=CanaryOut, responses=NO_CANARY)
def pin(body: CanaryPinIn, runtime: RuntimeDep, caller: CallerDep) -> Any:
    """Hold the live canary at its share, deciding nothing whatever its outcomes say (`pinned` false: release it)."""
    return runtime.pin_canary(caller, body.pinned).to_json()
