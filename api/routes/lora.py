"""`/v1/load_lora_adapter` and `/v1/unload_lora_adapter` with vLLM's runtime LoRA request shapes (admin key;
the answer a JSON message where vLLM's is the same message as text, which no client parses): the
local model serves a PEFT folder under a name that requests then give as `model`. This makes a logmem server a
real target for `logmem adapters push`, as a vLLM server started with runtime LoRA updating is.

An adapter is its tenant's data: the admin key acts for the tenant it names (X-Logmem-Tenant, as `adapters push`
sends it), and what it loads is listed to, and answers, that tenant alone."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from logmem.memory.errors import ConfigError

from ..deps import AdminDep, RuntimeDep
from ..schemas import ErrorOut, LoadLoraIn, LoraOut, UnloadLoraIn

router = APIRouter(prefix="/v1", tags=["lora"])
ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}}


@router.post("/load_lora_adapter", response_model=LoraOut, responses=ERRORS)
def load_lora_adapter(body: LoadLoraIn, runtime: RuntimeDep, admin: AdminDep) -> LoraOut:
    """Load the PEFT folder `lora_path` (readable by this server) under `lora_name` for the tenant the admin key names;
    a name is loaded once per tenant."""
    _local(runtime)
    runtime.load_lora(admin, body.lora_name, body.lora_path)
    return LoraOut(message=f"Success: LoRA adapter {body.lora_name!r} loaded.")


@router.post("/unload_lora_adapter", response_model=LoraOut, responses=ERRORS)
def unload_lora_adapter(body: UnloadLoraIn, runtime: RuntimeDep, admin: AdminDep) -> LoraOut:
    """Unload the named tenant's LoRA adapter `lora_name` (404 when that tenant has none of that name)."""
    _local(runtime)
    runtime.unload_lora(admin, body.lora_name)
    return LoraOut(message=f"Success: LoRA adapter {body.lora_name!r} unloaded.")


def _local(runtime: RuntimeDep) -> None:
    if runtime.upstream is not None:
        raise ConfigError("this server answers through an upstream: push adapters to it (`logmem adapters push`)")
