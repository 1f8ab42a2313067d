"""The runner's Memory protocol over the store, for one (org, flow, user)."""

from __future__ import annotations

from flowserve.providers.base import Message
from flowserve.store.memory import MemoryStore


class BoundMemory:
    __slots__ = ("flow_id", "org_id", "store", "user_id")

    def __init__(self, store: MemoryStore, org_id: str, flow_id: str, user_id: str) -> None:
        self.store, self.org_id, self.flow_id, self.user_id = store, org_id, flow_id, user_id

    async def load(self, node_id: str, window: int) -> list[Message]:
        return await self.store.load(self.org_id, self.flow_id, node_id, self.user_id, window)

    async def append(self, node_id: str, user: str, assistant: str) -> None:
        await self.store.append(self.org_id, self.flow_id, node_id, self.user_id, user, assistant)
