"""`push`: load a tenant's active adapter into an OpenAI-compatible server with runtime LoRA updating (vLLM started
with `--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or a logmem server), under the immutable name
`<tenant>-<version>`, and unload the tenant's other versions there. A proxy in front of that server then names it
in `model` for the tenant's requests. Rolling back and pushing again loads the previous version the same way."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from logmem.memory.errors import AdapterError
from logmem.memory.store import Store

from .upstream import ModelNames, UpstreamError, lora_name, parse_models, refused

logger = logging.getLogger(__name__)


@dataclass
class Pushed:
    """What a push did on the server."""

    tenant: str
    active: str | None  # the tenant's active adapter version (None: the base model)
    name: str | None  # the name it is served under there
    loaded: bool  # it was loaded now (False: it was already there, or there is none)
    unloaded: list[str] = field(default_factory=list)  # the tenant's other versions taken out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def same_model(a: str, b: str) -> bool:
    """Whether two names of a model (a hub id, a folder, a served name) name the same one: their last path parts,
    any case, without a .gguf suffix."""
    def plain(name: str) -> str:
        last = name.rstrip("/").rsplit("/", 1)[-1].lower()
        return last.removesuffix(".gguf")
    return plain(a) == plain(b)


def push(store: Store, tenant: str, url: str, *, key: str | None = None, timeout: float = 120.0) -> Pushed:
    """Make the server at `url` (its base URL with /v1) serve `tenant`'s active adapter as `<tenant>-<version>`.

    The adapter must have been trained on the model the server serves: one trained on another base is refused
    before anything is loaded. A name already loaded there is never loaded again (a version's weights never
    change). The tenant's other versions loaded there are unloaded afterwards (none, to roll back to the base).

    Raises:
        AdapterError: the adapter's base model is not the server's.
        UpstreamError: the server is unreachable or refused a load or unload.
    """
    active = store.active_adapter(tenant=tenant)
    ours = {lora_name(tenant, a.version) for a in store.adapters(tenant=tenant)}
    # the tenant header lets a logmem server's admin key act (vLLM ignores it)
    headers = {"X-Logmem-Tenant": tenant, **({"Authorization": f"Bearer {key}"} if key else {})}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout) as http:
        names = _names(http)
        result = Pushed(tenant, active.version if active else None, None, False)
        if active is not None:
            if not any(same_model(active.base_model, m) for m in [*names.base, *names.roots]):
                raise AdapterError(f"adapter {active.version} of tenant {tenant!r} was trained on "
                                   f"{active.base_model!r}; the server at {url} serves {', '.join(names.base)}")
            result.name = lora_name(tenant, active.version)
            if result.name not in names.loras:
                _post(http, "/load_lora_adapter", {"lora_name": result.name,
                                                   "lora_path": str(Path(active.path).resolve())})
                result.loaded = True
                logger.info("loaded %s into %s", result.name, url)
        for name in sorted(ours & set(names.loras) - {result.name}):
            _post(http, "/unload_lora_adapter", {"lora_name": name})
            result.unloaded.append(name)
            logger.info("unloaded %s from %s", name, url)
    return result


def _names(http: httpx.Client) -> ModelNames:
    return parse_models(_send(http, "GET", "/models"))


def _post(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    _send(http, "POST", path, json=body)


def _send(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        response = http.request(method, path, **kwargs)
    except httpx.TimeoutException:
        raise UpstreamError(f"{http.base_url}{path} did not answer in time", status=504,
                            code="upstream_timeout") from None
    except httpx.TransportError as exc:
        raise UpstreamError(f"{http.base_url} is unreachable: {type(exc).__name__}: {exc}",
                            code="upstream_unreachable") from None
    if response.status_code >= 300:
        raise refused(response)
    return response
