"""Organisations and API keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from flowserve.auth import NewKey, Principal, check_secret, new_key
from flowserve.errors import AuthError, NotFoundError
from flowserve.store.database import Database, utcnow
from flowserve.store.models import ApiKey, Org


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    org_id: str
    kind: str
    name: str
    created_at: datetime
    revoked: bool
    allowed_origins: tuple[str, ...]
    rate_limit_per_minute: int | None = None


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_org(self, org_id: str, name: str = "") -> None:
        async with self.db.session() as s:
            if await s.get(Org, org_id) is None:
                s.add(Org(id=org_id, name=name or org_id, created_at=utcnow()))

    async def org_exists(self, org_id: str) -> bool:
        async with self.db.session() as s:
            return await s.get(Org, org_id) is not None

    async def create_key(
        self,
        org_id: str,
        kind: str,
        name: str = "",
        allowed_origins: list[str] | None = None,
        rate_limit_per_minute: int | None = None,
    ) -> NewKey:
        key = new_key(kind)
        async with self.db.session() as s:
            if await s.get(Org, org_id) is None:
                raise NotFoundError(f"organisation {org_id!r} not found")
            s.add(
                ApiKey(
                    id=key.key_id,
                    org_id=org_id,
                    kind=kind,
                    name=name,
                    salt=key.salt,
                    secret_hash=key.secret_hash,
                    created_at=utcnow(),
                    allowed_origins=list(allowed_origins or []),
                    rate_limit_per_minute=rate_limit_per_minute,
                )
            )
        return key

    async def list_keys(self, org_id: str | None = None) -> list[KeyInfo]:
        async with self.db.session() as s:
            query = select(ApiKey).order_by(ApiKey.created_at)
            if org_id is not None:
                query = query.where(ApiKey.org_id == org_id)
            rows = (await s.scalars(query)).all()
        return [
            KeyInfo(
                r.id,
                r.org_id,
                r.kind,
                r.name,
                r.created_at,
                r.revoked_at is not None,
                tuple(r.allowed_origins or ()),
                r.rate_limit_per_minute,
            )
            for r in rows
        ]

    async def revoke(self, key_id: str, org_id: str | None = None) -> None:
        """Revoke a key (again: nothing changes). NotFoundError if unknown, or, with
        ``org_id``, of another org."""
        async with self.db.session() as s:
            row = await s.get(ApiKey, key_id)
            if row is None or (org_id is not None and row.org_id != org_id):
                raise NotFoundError(f"key {key_id!r} not found")
            if row.revoked_at is None:
                row.revoked_at = utcnow()

    async def verify(self, key_id: str, secret: str) -> Principal:
        async with self.db.session() as s:
            row = await s.get(ApiKey, key_id)
        # Hash and compare whatever happens (a dummy hash for an unknown id): same work, same
        # answer, for an unknown, revoked or wrong key.
        salt, stored = (row.salt, row.secret_hash) if row is not None else (None, None)
        matches = check_secret(salt, stored, secret)
        if row is None or row.revoked_at is not None or not matches:
            raise AuthError("invalid API key")
        return _principal(row)

    async def still_active(self, key_id: str) -> Principal:
        """A key already verified, read again (revoked since? changed limits?), without its
        secret: for refreshing a cache of verified keys."""
        async with self.db.session() as s:
            row = await s.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            raise AuthError("invalid API key")
        return _principal(row)


def _principal(row: ApiKey) -> Principal:
    return Principal(
        org_id=row.org_id,
        key_id=row.id,
        kind=row.kind,
        allowed_origins=tuple(row.allowed_origins or ()),
        rate_limit_per_minute=row.rate_limit_per_minute,
    )
