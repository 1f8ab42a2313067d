"""Flows: the file format, templates, validation and the compiled graph."""

from flowserve.flows.graph import Flow, compile_flow
from flowserve.flows.loader import load_flow_file, parse_flow_text
from flowserve.flows.spec import FlowSpec, LLMNodeSpec, TemplateNodeSpec

__all__ = [
    "Flow",
    "FlowSpec",
    "LLMNodeSpec",
    "TemplateNodeSpec",
    "compile_flow",
    "load_flow_file",
    "parse_flow_text",
]
