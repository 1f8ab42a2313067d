"""flowserve: run LLM flows and stream their outputs over a Stack AI-compatible HTTP API."""

from flowserve.client import AsyncClient, Client, Update
from flowserve.errors import APIError, FlowserveError, RunFailedError

__version__ = "0.1.0"
__all__ = ["APIError", "AsyncClient", "Client", "FlowserveError", "RunFailedError", "Update"]
