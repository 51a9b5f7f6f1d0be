"""The runtime's administration: the tenants' adapters (list, activate, roll back, push to a serving server) and
the API keys. A caller of None is the machine's operator, over every tenant."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from logmem.memory.errors import ConfigError
from logmem.memory.store import AdapterData, KeyData

from ..answering import Caller
from .assembly import Assembly

if TYPE_CHECKING:
    from ..push import Pushed


@dataclass
class AdapterChange:
    """An activation or a rollback: the tenant's active adapter before and after, and what a push did."""

    tenant: str
    was: str | None  # the version active before (None: the base model)
    active: str | None  # the version active now (None: the base model)
    adapter: AdapterData | None = None  # an activation's: the adapter now active
    pushed: Pushed | None = None  # with `push_to`: what that server serves now


class Admin(Assembly):
    """The tenants' adapters and the API keys."""

    def adapters(self, caller: Caller | None) -> list[AdapterData]:
        """The caller's adapters, oldest first (None: every tenant's)."""
        return self.store.adapters(tenant=caller.tenant if caller else None)

    def adapter(self, version: str) -> AdapterData:
        """The operator's look-up of any tenant's adapter `version` (NotFoundError: none)."""
        return self.store.get_adapter(version=version)

    def active_adapter(self, caller: Caller) -> AdapterData | None:
        """The adapter the caller's generator loads, or None for the base model."""
        return self.store.active_adapter(tenant=caller.tenant)

    def activate(self, caller: Caller, version: str, *, force: bool = False) -> AdapterChange:
        """Make `version` the caller's active adapter; with `push_to`, loaded into that server first (a failed load
        changes nothing)."""
        before = self.store.active_adapter(tenant=caller.tenant)
        was = before.version if before is not None else None
        if not self.settings.push_to:
            active = self.store.activate_adapter(tenant=caller.tenant, version=version, force=force)
            return AdapterChange(caller.tenant, was, active.version, active)
        from .. import push

        active, pushed = push.activate(self.store, caller.tenant, version, **self._push_target(), force=force)
        self._pushed()
        return AdapterChange(caller.tenant, was, active.version, active, pushed)

    def rollback(self, caller: Caller) -> AdapterChange:
        """Back to the caller's adapter active before; with `push_to`, that one is pushed to that server."""
        before = self.store.active_adapter(tenant=caller.tenant)
        was = before.version if before is not None else None
        if not self.settings.push_to:
            return AdapterChange(caller.tenant, was, self.store.rollback_adapter(tenant=caller.tenant))
        from .. import push

        try:
            now, pushed = push.rollback(self.store, caller.tenant, **self._push_target())
        finally:
            self._pushed()
        return AdapterChange(caller.tenant, was, now, pushed=pushed)

    def push(self, caller: Caller) -> Pushed:
        """Make the `push_to` server serve the caller's active adapter (and none of its other versions)."""
        if not self.settings.push_to:
            raise ConfigError("push needs a server to push to (the push_to setting)")
        from .. import push

        try:
            return push.push(self.store, caller.tenant, **self._push_target())
        finally:
            self._pushed()

    def _push_target(self) -> dict[str, Any]:
        s = self.settings
        return {"url": s.push_to, "key": s.push_key.get_secret_value() if s.push_key else None,
                "as_tenant": s.push_as_tenant}

    def _pushed(self) -> None:
        """The upstream's adapters changed: its model list is read again on the next request."""
        if self.upstream is not None:
            self.upstream.forget_names()

    # --- keys -----------------------------------------------------------------------------------
    def authenticate(self, key: str, *, tenant: str | None = None) -> Caller | None:
        """The caller a key acts for, or None for a missing, wrong or revoked key. An admin key acts only for
        the tenant it names (`tenant`); naming none, it acts for no tenant (returns None)."""
        admin = self.settings.admin_key
        if admin is not None and secrets.compare_digest(key.encode(), admin.get_secret_value().encode()):
            return Caller(tenant, None, True) if tenant else None
        found: KeyData | None = self.store.key_for(key)
        if found is None:
            return None
        if found.admin:
            return Caller(tenant, found.id, True) if tenant else None
        assert found.tenant is not None
        return Caller(found.tenant, found.id)

    def create_key(self, *, tenant: str | None, admin: bool = False, name: str | None = None) -> tuple[str, KeyData]:
        """A new key for `tenant` (or, `admin`, for any tenant it names): (the key, shown once; its record)."""
        return self.store.create_key(tenant=tenant, admin=admin, name=name)

    def keys(self, tenant: str | None = None) -> list[KeyData]:
        """The keys (never the keys themselves), of `tenant` or all."""
        return self.store.keys(tenant=tenant)

    def revoke_key(self, key_id: int) -> None:
        self.store.revoke_key(key_id=key_id)
