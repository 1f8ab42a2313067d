"""Flows: the file format, templates, validation and the compiled graph (node types are
``flowserve.nodes``)."""

from flowserve.flows.graph import Flow, compile_flow
from flowserve.flows.loader import load_flow_file, parse_flow_text
from flowserve.flows.spec import FlowSpec

__all__ = [
    "Flow",
    "FlowSpec",
    "compile_flow",
    "load_flow_file",
    "parse_flow_text",
]
