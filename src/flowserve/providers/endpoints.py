"""Where a flow file may point a provider: ``base_url`` parsed once, checked, and rebuilt.

A flow publisher is not an operator. Without a check, a node with ``base_url:
https://attacker.example`` and ``api_key_env: OPENAI_API_KEY`` would send the server's key to
the publisher. A check on the *string* is not enough: ``http://127.0.0.1:9@2130706433:9999/v1``
starts with ``http://127.0.0.1`` but an HTTP client connects to the host after the ``@``
(2130706433 is 127.0.0.1 written as one number, so this example stays on loopback).

So a base URL is parsed here into scheme, host, port and path, strictly: no userinfo, no
whitespace or control characters, no backslashes, no query or fragment, no percent-encoding or
non-ASCII in the host, no dot segments in the path. The host is normalised the way clients
read it (IPv4 in any of the forms ``inet_aton`` accepts, such as ``2130706433``, ``0x7f.1`` or
``0177.0.0.1``, becomes dotted decimal; an IPv6 literal becomes its compressed form; a name is
lower-cased without a trailing dot). The policy compares scheme, host and port exactly, and
the URL handed to the provider is rebuilt from the parsed parts, so the client connects to the
very host that was checked.

Written by hand because no library parses the way both the check and every client must agree
on: ``urllib.parse`` keeps userinfo and the raw host, ``httpx.URL`` accepts what WHATWG does,
and neither refuses the ambiguous forms.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from flowserve.errors import ConfigError

_SCHEMES = {"http": 80, "https": 443}
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_NUMBER = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")
_PATH = re.compile(r"^(?:/[A-Za-z0-9._~!$&'()*+,;=:-]*)*$")
_MAX_URL = 2048


class EndpointError(ValueError):
    """A base URL that cannot be used; the message says why without repeating the URL. Never
    leaves the caller that parses (flow compilation turns it into a FlowValidationError)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed base URL. ``host`` is normalised; ``port`` is ``None`` when not written."""

    scheme: str
    host: str  # a DNS name, dotted-decimal IPv4, or an IPv6 literal in brackets
    port: int | None
    path: str  # "" or "/seg/seg" without a trailing slash

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else _SCHEMES[self.scheme]

    def url(self) -> str:
        """The URL rebuilt from the parsed parts: what the provider's client is given."""
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{self.host}{port}{self.path}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``text`` as an http(s) base URL, or raise :class:`EndpointError`."""
    if not isinstance(text, str) or not text:
        raise EndpointError("must be a non-empty URL")
    if len(text) > _MAX_URL:
        raise EndpointError(f"longer than {_MAX_URL} characters")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in text):
        raise EndpointError("must not contain whitespace, control or non-ASCII characters")
    if "\\" in text:
        raise EndpointError("must not contain a backslash")
    if "@" in text:
        raise EndpointError("must not contain '@' (user information is not allowed)")
    if "?" in text or "#" in text:
        raise EndpointError("must not contain a query or fragment")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise EndpointError("must start with http:// or https://")
    authority, slash, path = rest.partition("/")
    path = (slash + path).rstrip("/")
    host, port = _split_authority(authority)
    if not _PATH.match(path) or "%" in path:
        raise EndpointError("has characters not allowed in a path")
    if any(seg in (".", "..") for seg in path.split("/")[1:]):
        raise EndpointError("must not contain '.' or '..' path segments")
    return Endpoint(scheme, host, port, path)


def _split_authority(authority: str) -> tuple[str, int | None]:
    if not authority:
        raise EndpointError("has no host")
    if authority.startswith("["):
        inner, close, after = authority[1:].partition("]")
        if not close:
            raise EndpointError("has an unclosed '[' in its host")
        host = _ipv6(inner)
        if after and not after.startswith(":"):
            raise EndpointError("has characters after its IPv6 host")
        port_text = after[1:] if after else None
    else:
        raw, colon, port_text_ = authority.partition(":")
        port_text = port_text_ if colon else None
        host = _host(raw)
    return host, _port(port_text)


def _port(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not text.isascii() or len(text) > 5:
        raise EndpointError("has a port that is not a number from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise EndpointError("has a port that is not a number from 1 to 65535")
    return port


def _ipv6(inner: str) -> str:
    if "%" in inner:
        raise EndpointError("must not name an IPv6 zone")
    try:
        address = ipaddress.IPv6Address(inner)
    except ValueError:
        raise EndpointError("has an invalid IPv6 address") from None
    return f"[{address.compressed}]"


def _host(raw: str) -> str:
    host = raw.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or "%" in host or "[" in host or "]" in host:
        raise EndpointError("has an invalid host")
    labels = host.split(".")
    # As clients do (the WHATWG URL rules, and the resolver's inet_aton): a host whose last
    # label is a number is an IPv4 address in one of its many spellings, never a name.
    if _NUMBER.match(labels[-1]):
        return _ipv4(labels)
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise EndpointError("has an invalid host name")
    return host


def _ipv4(labels: list[str]) -> str:
    """Dotted decimal for the forms inet_aton accepts: 1 to 4 parts, each decimal, octal
    (leading 0) or hex (0x); the last part fills the remaining bytes."""
    if len(labels) > 4:
        raise EndpointError("has an invalid IPv4 address")
    numbers: list[int] = []
    for label in labels:
        if not _NUMBER.match(label):
            raise EndpointError("has an invalid IPv4 address")
        if label[:2].lower() == "0x":
            value = int(label[2:] or "0", 16)
        elif len(label) > 1 and label.startswith("0"):
            if any(c not in "01234567" for c in label):
                raise EndpointError("has an invalid IPv4 address")
            value = int(label, 8)
        else:
            value = int(label)
        numbers.append(value)
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        raise EndpointError("has an invalid IPv4 address")
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return str(ipaddress.IPv4Address(value))


def _admits(allowed: Endpoint, e: Endpoint) -> bool:
    """Whether an ``allowed_base_urls`` entry admits ``e``: the same scheme and host, the
    entry's port if it names one, a path under the entry's path if it has one."""
    return (
        e.scheme == allowed.scheme
        and e.host == allowed.host
        and (allowed.port is None or e.effective_port == allowed.port)
        and (not allowed.path or e.path == allowed.path or e.path.startswith(allowed.path + "/"))
    )


class EndpointPolicy:
    """What a flow *file* may point a provider at. Endpoints set by the operator in the
    provider settings are not subject to it.

    ``allowed_base_urls`` are parsed like base URLs: ``http://127.0.0.1`` admits any port and
    path on that host over http; ``http://127.0.0.1:11434`` only that port;
    ``https://api.example/v1`` only paths under ``/v1``. A bad entry is a ``ConfigError`` at
    start-up, not a silent hole."""

    def __init__(
        self,
        allowed_base_urls: tuple[str, ...] = (
            "http://127.0.0.1",
            "http://localhost",
            "http://[::1]",
        ),
        allowed_key_envs: tuple[str, ...] = ("*_API_KEY", "*_API_TOKEN"),
    ) -> None:
        self.allowed_key_envs = tuple(allowed_key_envs)
        self._allowed: list[Endpoint] = []
        for entry in allowed_base_urls:
            try:
                self._allowed.append(parse_endpoint(entry))
            except EndpointError as exc:
                raise ConfigError(f"allowed_base_urls entry {entry!r} {exc}") from None

    def check_base_url(self, url: str) -> str:
        """The URL to hand the provider (rebuilt from the parsed parts), or raise
        :class:`EndpointError` saying why it is refused."""
        endpoint = parse_endpoint(url)
        if not any(_admits(allowed, endpoint) for allowed in self._allowed):
            raise EndpointError("is not allowed by this server (settings: allowed_base_urls)")
        return endpoint.url()

    def key_env_problem(self, name: str) -> str | None:
        if any(fnmatchcase(name, pattern) for pattern in self.allowed_key_envs):
            return None
        return f"api_key_env {name!r} is not allowed by this server (settings: allowed_key_envs)"
