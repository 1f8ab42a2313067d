"""flowserve: run LLM flows and stream their outputs over a Stack AI-compatible HTTP API."""

from typing import TYPE_CHECKING, Any

from flowserve.errors import APIError, FlowserveError, RunFailedError

if TYPE_CHECKING:
    from flowserve.client import AsyncClient, Client, Update

__version__ = "0.1.0"
__all__ = ["APIError", "AsyncClient", "Client", "FlowserveError", "RunFailedError", "Update"]


def __getattr__(name: str) -> Any:
    # The client (and httpx) is imported on first use, so the server starts faster.
    if name in ("AsyncClient", "Client", "Update"):
        import flowserve.client

        return getattr(flowserve.client, name)
    raise AttributeError(f"module 'flowserve' has no attribute {name!r}")
