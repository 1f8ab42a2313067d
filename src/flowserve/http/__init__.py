"""The HTTP API: Stack AI-compatible routes, SSE and JSON-lines streaming."""

from flowserve.http.app import create_app

__all__ = ["create_app"]
