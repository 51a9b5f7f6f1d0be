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
from .base import StoreBase
from .records import _rowcount
from .schema import ApiKeyRow

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
        """The live (not revoked) key record of `key`, or None."""
        keys = ApiKeyRow.__table__
        with self.engine.connect() as conn:  # every request asks: a Core read, no ORM session
            row = conn.execute(select(keys).where(keys.c.key_hash == hash_key(key),
                                                  keys.c.revoked_at.is_(None))).first()
        return KeyData(row.id, row.prefix, row.tenant, bool(row.admin), row.name, row.created_at,
                       row.revoked_at) if row is not None else None

    def keys(self, *, tenant: str | None = None) -> list[KeyData]:
        stmt = select(ApiKeyRow).order_by(ApiKeyRow.id)
        if tenant is not None:
            stmt = stmt.where(ApiKeyRow.tenant == tenant)
        with Session(self.engine) as s:
            return [_key(r) for r in s.scalars(stmt)]

    def revoke_key(self, *, key_id: int) -> None:
        with self.transaction() as tx:
            done = _rowcount(tx.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                                        .values(revoked_at=time.time()).execution_options(synchronize_session=False)))
        if not done:
            raise NotFoundError(f"no live API key {key_id}")


def _key(row: ApiKeyRow) -> KeyData:
    return KeyData(row.id, row.prefix, row.tenant, bool(row.admin), row.name, row.created_at, row.revoked_at)
