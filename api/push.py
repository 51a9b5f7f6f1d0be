"""`push`: load a tenant's active adapter into an OpenAI-compatible server with runtime LoRA updating (vLLM started
with `--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or a logmem server), under the immutable name
`<tenant>-<version>` (its live canary too, under its own), and unload the tenant's other versions there. A proxy in
front of that server then names it in `model` for the tenant's requests. Rolling back and pushing again loads the
previous version the same way.

`activate` and `rollback` do both at once (a service with `push_to` set activates and rolls back this way): an
adapter is loaded there before it becomes active, so a failed load leaves the tenant as it was."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from logmem.memory.errors import AdapterError, NotFoundError
from logmem.memory.store import AdapterData, Store

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
    canary: str | None = None  # the name its live canary is served under there (None: no live canary)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def same_model(a: str, b: str) -> bool:
    """Whether two names of a model (a hub id, a folder, a served name) name the same one: their last path parts,
    any case, without a .gguf suffix."""
    def plain(name: str) -> str:
        last = name.rstrip("/").rsplit("/", 1)[-1].lower()
        return last.removesuffix(".gguf")
    return plain(a) == plain(b)


def push(store: Store, tenant: str, url: str, *, key: str | None = None, as_tenant: str | None = None,
         timeout: float = 120.0) -> Pushed:
    """Make the server at `url` (its base URL with /v1) serve `tenant`'s active adapter as `<tenant>-<version>`.

    The adapter must have been trained on the model the server serves: one trained on another base is refused
    before anything is loaded. A name already loaded there is never loaded again (a version's weights never
    change). The tenant's other versions loaded there are unloaded afterwards (none, to roll back to the base).
    `as_tenant` is the tenant the server knows the proxy as (a logmem server keeps each adapter to the tenant an admin
    key loaded it for, and answers no other tenant with it; vLLM has no tenants): by default `tenant`.

    Raises:
        AdapterError: the adapter's base model is not the server's.
        UpstreamError: the server is unreachable or refused a load or unload.
    """
    active, canary = store.active_adapter(tenant=tenant), store.live_canary(tenant=tenant)
    with _client(url, as_tenant or tenant, key, timeout) as http:
        names = _names(http)
        result = Pushed(tenant, active.version if active else None, None, False)
        if active is not None:
            result.name, result.loaded = _load(http, names, tenant, active)
        if canary is not None:  # its share of conversations names it too (a proxy routes them there once listed)
            result.canary, _ = _load(http, names, tenant, store.get_adapter(version=canary.version))
        result.unloaded = _unload_others(http, names, store, tenant, keep={result.name, result.canary})
    return result


def activate(store: Store, tenant: str, version: str, url: str, *, key: str | None = None, force: bool = False,
             as_tenant: str | None = None, timeout: float = 120.0) -> tuple[AdapterData, Pushed]:
    """Activate `version` for `tenant` and make the server at `url` serve it: loaded there first (its base model
    checked), then made active in the store, then the tenant's other versions unloaded there. An adapter the store
    refuses to activate (rejected, stale) is unloaded again; a failed load leaves the active adapter as it was.
    `as_tenant` as for `push`.

    Raises:
        NotFoundError: no such version in this tenant (nothing is asked of the server).
        AdapterError: the store refuses it, or its base model is not the server's.
        UpstreamError: the server is unreachable or refused the load.
    """
    adapter = store.get_adapter(version=version)
    if adapter.tenant != tenant:
        raise NotFoundError(f"no adapter {version!r} in tenant {tenant!r}")
    with _client(url, as_tenant or tenant, key, timeout) as http:
        names = _names(http)
        name, loaded = _load(http, names, tenant, adapter)
        try:
            active = store.activate_adapter(tenant=tenant, version=version, force=force)
        except BaseException:
            if loaded:  # not served by anyone yet: taken out again
                _post(http, "/unload_lora_adapter", {"lora_name": name})
                logger.info("unloaded %s from %s: its activation failed", name, url)
            raise
        result = Pushed(tenant, version, name, loaded, _unload_others(http, names, store, tenant, keep={name}))
    return active, result


def rollback(store: Store, tenant: str, url: str, *, key: str | None = None, as_tenant: str | None = None,
             timeout: float = 120.0) -> tuple[str | None, Pushed]:
    """Roll `tenant` back to its previous adapter (or the base model) and push that to the server at `url`.

    Rollback goes first (it takes a bad adapter out of service whatever the server says): when the push fails
    after it, the error says so, and the tenant's requests get the base model until a push succeeds (a proxy names
    only the tenant's active version, and only once the server lists it).

    Raises:
        AdapterError, UpstreamError: the push failed (the rollback stands).
    """
    now = store.rollback_adapter(tenant=tenant)
    try:
        return now, push(store, tenant, url, key=key, as_tenant=as_tenant, timeout=timeout)
    except UpstreamError as exc:
        raise UpstreamError(f"{_rolled_back(tenant, now)}, but pushing it to {url} failed: {exc}", status=exc.status,
                            kind=exc.kind, code=exc.code, retry_after=exc.retry_after) from None
    except AdapterError as exc:
        raise AdapterError(f"{_rolled_back(tenant, now)}, but it cannot be pushed to {url}: {exc}") from None


def _rolled_back(tenant: str, now: str | None) -> str:
    return f"tenant {tenant!r} was rolled back to {f'adapter {now}' if now else 'the base model'}"


def _client(url: str, tenant: str, key: str | None, timeout: float) -> httpx.Client:
    # the tenant header names the tenant a logmem server's admin key acts for, and so owns what it loads (vLLM
    # ignores it)
    headers = {"X-Logmem-Tenant": tenant, **({"Authorization": f"Bearer {key}"} if key else {})}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)


def _load(http: httpx.Client, names: ModelNames, tenant: str, adapter: AdapterData) -> tuple[str, bool]:
    """Load `adapter` under `<tenant>-<version>` unless it is there already: (its name, whether it was loaded now).
    One trained on a model the server does not serve is refused before anything is sent."""
    if not any(same_model(adapter.base_model, m) for m in [*names.base, *names.roots]):
        raise AdapterError(f"adapter {adapter.version} of tenant {tenant!r} was trained on {adapter.base_model!r}; "
                           f"the server at {http.base_url} serves {', '.join(names.base)}")
    name = lora_name(tenant, adapter.version)
    if name in names.loras:
        return name, False
    _post(http, "/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(adapter.path).resolve())})
    logger.info("loaded %s into %s", name, http.base_url)
    return name, True


def _unload_others(http: httpx.Client, names: ModelNames, store: Store, tenant: str,
                   keep: set[str | None]) -> list[str]:
    """Unload the tenant's versions loaded there (by the model list read before), all but those in `keep`."""
    ours = {lora_name(tenant, a.version) for a in store.adapters(tenant=tenant)}
    unloaded = []
    for name in sorted(ours & set(names.loras) - keep):
        _post(http, "/unload_lora_adapter", {"lora_name": name})
        unloaded.append(name)
        logger.info("unloaded %s from %s", name, http.base_url)
    return unloaded


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
