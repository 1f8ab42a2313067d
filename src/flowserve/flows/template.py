"""Plain ``{name}`` substitution.

Written by hand on purpose: ``str.format`` allows attribute access and format specs
(``{x.__class__}``, ``{x:>99999}``), and Jinja executes code. Here a placeholder is only
``{name}``; ``{{`` and ``}}`` are literal braces; anything else with braces (JSON in a prompt)
is left as written. Substitution is a single pass over the *template*, so a value that itself
contains ``{in-1}`` is inserted verbatim and never re-expanded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

NAME = r"[A-Za-z][A-Za-z0-9_-]*"
_TOKEN = re.compile(r"\{\{|\}\}|\{(" + NAME + r")\}")


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal text and placeholder names, alternating."""

    parts: tuple[str, ...]  # even indexes: literal text; odd indexes: placeholder names

    @property
    def names(self) -> tuple[str, ...]:
        return self.parts[1::2]

    def size(self, values: Mapping[str, str]) -> int:
        """The length :meth:`render` would return, without building it (so that a template
        that would expand past a limit is refused before it takes the memory)."""
        parts = self.parts
        literal = sum(len(parts[i]) for i in range(0, len(parts), 2))
        return literal + sum(len(values[parts[i]]) for i in range(1, len(parts), 2))

    def render(self, values: Mapping[str, str]) -> str:
        parts = self.parts
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            out.append(values[parts[i]])
            out.append(parts[i + 1])
        return "".join(out)


def parse_template(text: str) -> Template:
    parts: list[str] = []
    literal: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[pos : match.start()])
        token = match.group(0)
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        else:
            parts.append("".join(literal))
            parts.append(match.group(1))
            literal = []
        pos = match.end()
    literal.append(text[pos:])
    parts.append("".join(literal))
    return Template(tuple(parts))
