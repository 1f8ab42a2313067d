"""Published flows and their versions. Publishing an unchanged flow keeps its version."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from flowserve.errors import NotFoundError
from flowserve.store.database import Database, utcnow
from flowserve.store.models import FlowVersion, Org


@dataclass(frozen=True, slots=True)
class StoredFlow:
    org_id: str
    flow_id: str
    version: int
    spec: dict[str, Any]
    source: str
    created_at: datetime
    created: bool = False  # True when this publish made a new version


def spec_digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _stored(row: FlowVersion, created: bool = False) -> StoredFlow:
    return StoredFlow(
        row.org_id, row.flow_id, row.version, row.spec, row.source, row.created_at, created
    )


class FlowStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def publish(self, org_id: str, spec: dict[str, Any], source: str) -> StoredFlow:
        flow_id = spec["id"]
        digest = spec_digest(spec)
        for _attempt in range(5):  # another process may publish the same flow concurrently
            try:
                async with self.db.session() as s:
                    if await s.get(Org, org_id) is None:
                        raise NotFoundError(f"organisation {org_id!r} not found")
                    latest = await s.scalar(
                        select(FlowVersion)
                        .where(FlowVersion.org_id == org_id, FlowVersion.flow_id == flow_id)
                        .order_by(FlowVersion.version.desc())
                        .limit(1)
                    )
                    if latest is not None and latest.digest == digest:
                        return _stored(latest)
                    row = FlowVersion(
                        org_id=org_id,
                        flow_id=flow_id,
                        version=(latest.version + 1) if latest else 1,
                        spec=spec,
                        source=source,
                        digest=digest,
                        created_at=utcnow(),
                    )
                    s.add(row)
                return _stored(row, created=True)
            except IntegrityError:
                continue
        raise RuntimeError("could not publish: too many concurrent publishes")

    async def get(self, org_id: str, flow_id: str, version: int | None = None) -> StoredFlow:
        query = select(FlowVersion).where(
            FlowVersion.org_id == org_id, FlowVersion.flow_id == flow_id
        )
        if version is None or version < 0:
            query = query.order_by(FlowVersion.version.desc()).limit(1)
        else:
            query = query.where(FlowVersion.version == version)
        async with self.db.session() as s:
            row = await s.scalar(query)
        if row is None:
            what = (
                f"flow {flow_id!r}"
                if version is None or version < 0
                else (f"version {version} of flow {flow_id!r}")
            )
            raise NotFoundError(f"{what} not found")
        return _stored(row)

    async def all_flows(self) -> list[tuple[str, str]]:
        """(org_id, flow_id) of every published flow."""
        async with self.db.session() as s:
            rows = await s.execute(select(FlowVersion.org_id, FlowVersion.flow_id).distinct())
            return [(r[0], r[1]) for r in rows]

    async def list(self, org_id: str, limit: int | None = None) -> list[tuple[str, int, datetime]]:
        """(flow_id, latest version, published at) for each flow of the org, by flow id;
        the first ``limit`` of them if given."""
        async with self.db.session() as s:
            latest = (
                select(FlowVersion.flow_id, func.max(FlowVersion.version).label("v"))
                .where(FlowVersion.org_id == org_id)
                .group_by(FlowVersion.flow_id)
                .subquery()
            )
            rows = await s.execute(
                select(FlowVersion.flow_id, FlowVersion.version, FlowVersion.created_at)
                .join(
                    latest,
                    (FlowVersion.flow_id == latest.c.flow_id) & (FlowVersion.version == latest.c.v),
                )
                .where(FlowVersion.org_id == org_id)
                .order_by(FlowVersion.flow_id)
                .limit(limit)
            )
            return [(r[0], r[1], r[2]) for r in rows]
