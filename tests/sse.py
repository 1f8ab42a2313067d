"""A minimal SSE reader for tests: what a browser's EventSource parser would see."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Message:
    id: str | None = None
    data_lines: list[str] = field(default_factory=list)
    retry: int | None = None

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)

    def json(self) -> Any:
        return json.loads(self.data)


def parse(text: str) -> Iterator[Message]:
    """Yields each dispatched message; comment lines are skipped (like fetch-event-source,
    a blank line dispatches even without data, so a stray blank would show up here)."""
    current = Message()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the text after the last newline is not a line
    for line in lines:
        if line == "":
            if current.data_lines or current.id is not None:
                yield current
            elif current.retry is None:
                yield current  # an empty dispatch: a bug for the docs' client
            current = Message()
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                current.data_lines.append(value)
            elif name == "id":
                current.id = value
            elif name == "retry":
                current.retry = int(value)
