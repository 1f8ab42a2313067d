"""Python client for flowserve, and for Stack AI's hosted API (same routes)."""

from flowserve.client._client import AsyncClient, Client, RunPage, Update

__all__ = ["AsyncClient", "Client", "RunPage", "Update"]
