"""Conversation memory per (org, flow, node, user_id)."""

from __future__ import annotations

from sqlalchemy import select

from flowserve.providers.base import Message
from flowserve.store.database import Database, utcnow
from flowserve.store.models import MemoryTurn


class MemoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(
        self, org_id: str, flow_id: str, node_id: str, user_id: str, window: int
    ) -> list[Message]:
        async with self.db.session() as s:
            rows = (
                await s.scalars(
                    select(MemoryTurn)
                    .where(
                        MemoryTurn.org_id == org_id,
                        MemoryTurn.flow_id == flow_id,
                        MemoryTurn.node_id == node_id,
                        MemoryTurn.user_id == user_id,
                    )
                    .order_by(MemoryTurn.pk.desc())
                    .limit(window)
                )
            ).all()
        messages: list[Message] = []
        for row in reversed(rows):
            messages.append(Message("user", row.user_text))
            messages.append(Message("assistant", row.assistant_text))
        return messages

    async def append(
        self, org_id: str, flow_id: str, node_id: str, user_id: str, user: str, assistant: str
    ) -> None:
        async with self.db.session() as s:
            s.add(
                MemoryTurn(
                    org_id=org_id,
                    flow_id=flow_id,
                    node_id=node_id,
                    user_id=user_id,
                    user_text=user,
                    assistant_text=assistant,
                    created_at=utcnow(),
                )
            )
