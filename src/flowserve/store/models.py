"""Tables. Secrets are never stored in clear: API keys are kept as salted hashes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Org(Base):
    __tablename__ = "orgs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public part of the key
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "public" | "private"
    name: Mapped[str] = mapped_column(String(200), default="")
    salt: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    allowed_origins: Mapped[list[Any]] = mapped_column(default=list)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)


class FlowVersion(Base):
    __tablename__ = "flow_versions"
    __table_args__ = (UniqueConstraint("org_id", "flow_id", "version"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"))
    flow_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]]
    source: Mapped[str] = mapped_column(Text)  # the file as published
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_org_flow", "org_id", "flow_id"),
        Index("ix_runs_state", "state"),
        # Run history, newest first, paged by (queued_at, id): flowserve.store.runs.RunStore.list
        Index("ix_runs_org_queued", "org_id", "queued_at", "id"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    flow_id: Mapped[str] = mapped_column(String(64))
    flow_version: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # RUNNING COMPLETED FAILED CANCELLED
    # The Instance (process) running it: a RUNNING run whose owner is dead was interrupted.
    owner: Mapped[str | None] = mapped_column(String(32), nullable=True)
    inputs: Mapped[dict[str, Any]]
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_node: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    usage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Per node: {"started_ms", "duration_ms", "state"}, from when the request was accepted
    # (see flowserve.runs.run.Run.node_timings); None for runs recorded before it existed.
    nodes: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # What its retrieving nodes found (contract 3.7): the citations, in graph order then by
    # index, and one entry per retrieving node; None for runs recorded before they were kept.
    citations: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    retrievals: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    first_token_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class MemoryTurn(Base):
    __tablename__ = "memory_turns"
    __table_args__ = (Index("ix_memory_key", "org_id", "flow_id", "node_id", "user_id", "pk"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(64))
    flow_id: Mapped[str] = mapped_column(String(64))
    node_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(256))
    user_text: Mapped[str] = mapped_column(Text)
    assistant_text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Instance(Base):
    """A live flowserve process using this database. It refreshes ``heartbeat_at`` while it
    runs and deletes its row when it stops; see ``flowserve.store.instances``."""

    __tablename__ = "instances"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    # Where the process can be checked directly: boot id + pid namespace; "" when unknown.
    node: Mapped[str] = mapped_column(String(200), default="")
    pid: Mapped[int] = mapped_column(Integer)
    pid_started: Mapped[str] = mapped_column(String(32), default="")  # tells pid reuse apart
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
