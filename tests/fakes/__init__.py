"""Wire-faithful fake provider servers for the adapter tests.

Each fake speaks one provider's streaming wire format byte for byte (see
``reference/providers-wire.md``), runs on a real socket, takes scripted :class:`Scenario`
faults, and records what the client did (requests, disconnects, Replicate cancels).
"""

from tests.fakes._server import (
    DROP,
    FakeServer,
    RecordedRequest,
    RecordingServer,
    Scenario,
    serve,
)
from tests.fakes.anthropic_wire import AnthropicFake
from tests.fakes.openai_wire import OpenAIFake
from tests.fakes.replicate_wire import ReplicateFake

__all__ = [
    "DROP",
    "AnthropicFake",
    "FakeServer",
    "OpenAIFake",
    "RecordedRequest",
    "RecordingServer",
    "ReplicateFake",
    "Scenario",
    "serve",
]
