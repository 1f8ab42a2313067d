"""Server-sent events from raw response bytes, for adapters that read the body themselves.

Written by hand because the SDKs' decoders are private and build a model object per chunk:
in the relay profile that per-chunk work dominated (see bench/RESULTS.md). This follows the
WHATWG rules the SDKs follow: lines end in CR, LF or CRLF; ``:`` starts a comment; one leading
space after the field's colon is dropped; several ``data:`` lines join with ``\\n``; a blank
line dispatches the event. Lines are split on bytes and never decoded here, so a multi-byte
character split across network reads is reassembled before anyone decodes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator


async def sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The ``data`` of each event, as bytes (events without data are skipped)."""
    buffer = b""
    data: list[bytes] = []
    async for chunk in chunks:
        buffer = buffer + chunk if buffer else chunk
        if b"\r" in buffer:
            # Rare: normalise CRLF and CR line ends; keep a trailing CR (its LF may follow).
            tail = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if tail:
                buffer = buffer[:-1] + b"\r"
        lines = buffer.split(b"\n")
        buffer = lines.pop()
        for line in lines:
            if not line:
                if data:
                    yield data[0] if len(data) == 1 else b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            # other fields (event, id, retry) and comments carry nothing we use
    if data:  # a body that ends without the final blank line
        yield data[0] if len(data) == 1 else b"\n".join(data)
