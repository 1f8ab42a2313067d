"""flowserve: run LLM flows and stream their outputs over a Stack AI-compatible HTTP API."""

__version__ = "0.1.0"
