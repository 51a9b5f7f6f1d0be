"""API keys of the service: stored as SHA-256 hashes, each mapped to one tenant (or admin)."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..errors import NotFoundError
from .engine import StoreBase
from .schema import ApiKeyRow
from .sql import rowcount

KEY_PREFIX = "lm-"


@dataclass(frozen=True)
class KeyData:
    """An API key as the store knows it (never the key itself)."""

    id: int
    prefix: str
    tenant: str | None
    admin: bool
    name: str | None
    created_at: float
    revoked_at: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore(StoreBase):
    # A key found live is trusted for this long without asking SQL again: the lookup is most of what
    # authenticating costs a request. Revoking through this store drops the cache at once; a revocation made
    # by another process takes effect here within this many seconds. 0 (a store's default: exact) asks SQL on
    # every call; the service sets its `key_cache_seconds` setting here (2 s by default).
    key_cache_seconds: float = 0.0
    KEY_CACHE_SIZE = 4096  # live keys remembered at most (only live ones: a wrong key is never cached)
    _key_cache: dict[str, tuple[float, KeyData]] | None = None

    def create_key(self, *, tenant: str | None, admin: bool = False, name: str | None = None) -> tuple[str, KeyData]:
        """A new random key for `tenant` (or an admin key); returns (the key, shown once, and its record)."""
        if (tenant is None) != admin:
            raise ValueError("a key belongs to one tenant, or is an admin key with no tenant")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.transaction() as tx:
            row = ApiKeyRow(key_hash=hash_key(key), prefix=key[:10], tenant=tenant, admin=admin, name=name,
                            created_at=time.time())
            tx.add(row)
            tx.flush()
            return key, _key(row)

    def key_for(self, key: str) -> KeyData | None:
        """The live (not revoked) key record of `key`, or None (see `key_cache_seconds`)."""
        digest, now = hash_key(key), time.monotonic()
        if self._key_cache is None:
            self._key_cache = {}
        cached = self._key_cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        keys = ApiKeyRow.__table__
        with self.engine.connect() as conn:  # every request may ask: a Core read, no ORM session
            row = conn.execute(select(keys).where(keys.c.key_hash == digest, keys.c.revoked_at.is_(None))).first()
        if row is None:
            self._key_cache.pop(digest, None)
            return None
        found = KeyData(row.id, row.prefix, row.tenant, bool(row.admin), row.name, row.created_at, row.revoked_at)
        if self.key_cache_seconds > 0:
            if len(self._key_cache) >= self.KEY_CACHE_SIZE:
                self._key_cache.clear()
            self._key_cache[digest] = (now + self.key_cache_seconds, found)
        return found

    def keys(self, *, tenant: str | None = None) -> list[KeyData]:
        stmt = select(ApiKeyRow).order_by(ApiKeyRow.id)
        if tenant is not None:
            stmt = stmt.where(ApiKeyRow.tenant == tenant)
        with Session(self.engine) as s:
            return [_key(r) for r in s.scalars(stmt)]

    def revoke_key(self, *, key_id: int) -> None:
        with self.transaction() as tx:
            done = rowcount(tx.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                                        .values(revoked_at=time.time()).execution_options(synchronize_session=False)))
        self._key_cache = None  # here, a revoked key stops working at once
        if not done:
            raise NotFoundError(f"no live API key {key_id}")


def _key(row: ApiKeyRow) -> KeyData:
    return KeyData(row.id, row.prefix, row.tenant, bool(row.admin), row.name, row.created_at, row.revoked_at)
