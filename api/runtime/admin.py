"""The runtime's administration: the tenants' adapters (activate, roll back, push to a serving server) and the
API keys."""

from __future__ import annotations

import secrets
from typing import Any

from logmem.memory.store import AdapterData, KeyData

from .assembly import Assembly, Caller


class Admin(Assembly):
    """The tenants' adapters and the API keys."""

    def adapters(self, caller: Caller) -> list[AdapterData]:
        return self.memory.adapters(caller.tenant)

    def activate(self, caller: Caller, version: str, *, force: bool = False) -> AdapterData:
        """Make `version` the caller's active adapter; with `push_to`, loaded into that server first."""
        if not self.settings.push_to:
            return self.memory.activate_adapter(version, tenant=caller.tenant, force=force)
        from .. import push

        active, _ = push.activate(self.store, caller.tenant, version, **self._push_target(), force=force)
        self._pushed()
        return active

    def rollback(self, caller: Caller) -> str | None:
        """Back to the caller's adapter active before; with `push_to`, that one is pushed to that server."""
        if not self.settings.push_to:
            return self.memory.rollback_adapter(caller.tenant)
        from .. import push

        try:
            return push.rollback(self.store, caller.tenant, **self._push_target())[0]
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
