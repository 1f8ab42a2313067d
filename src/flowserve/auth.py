"""API keys: creation, hashing, verification.

A key reads ``fs-pub-<id>-<secret>`` (public) or ``fs-priv-<id>-<secret>`` (private). Only the
id and a salted SHA-256 of the secret are stored; verification looks the id up and compares
hashes in constant time. Public keys live in browser code and may only run flows of their org;
private keys may also publish flows and read run records.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from flowserve.errors import AuthError

PUBLIC = "public"
PRIVATE = "private"
_PREFIX = {PUBLIC: "fs-pub", PRIVATE: "fs-priv"}
_KEY_RE = re.compile(r"^fs-(pub|priv)-([a-z0-9]{12})-([A-Za-z0-9_-]{20,64})$")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the verified key's org, id and kind."""

    org_id: str
    key_id: str
    kind: str
    allowed_origins: tuple[str, ...] = field(default=())
    rate_limit_per_minute: int | None = None

    @property
    def is_private(self) -> bool:
        return self.kind == PRIVATE


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    kind: str
    token: str  # shown once, never stored
    salt: str
    secret_hash: str


def hash_secret(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def new_key(kind: str) -> NewKey:
    if kind not in _PREFIX:
        raise ValueError(f"kind must be {PUBLIC!r} or {PRIVATE!r}")
    key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    token = f"{_PREFIX[kind]}-{key_id}-{secret}"
    return NewKey(key_id, kind, token, salt, hash_secret(salt, secret))


def parse_bearer(header: str | None) -> tuple[str, str]:
    """Split an ``Authorization`` header into (key_id, secret). Raises AuthError (401)."""
    if not header:
        raise AuthError("missing Authorization header (expected 'Bearer <api key>')")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed Authorization header (expected 'Bearer <api key>')")
    match = _KEY_RE.match(token.strip())
    if match is None:
        raise AuthError("invalid API key")
    return match.group(2), match.group(3)


def secret_matches(salt: str, secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(salt, secret), stored_hash)


# Hashed and compared against when the key id is unknown, so that a miss does the same work
# as a hit: the response time does not tell an attacker whether a key id exists.
_DUMMY_SALT = secrets.token_hex(16)
_DUMMY_HASH = hash_secret(_DUMMY_SALT, secrets.token_urlsafe(32))


def check_secret(salt: str | None, stored_hash: str | None, secret: str) -> bool:
    """``secret_matches`` against the stored key, or against a dummy when there is none."""
    if salt is None or stored_hash is None:
        secret_matches(_DUMMY_SALT, secret, _DUMMY_HASH)
        return False
    return secret_matches(salt, secret, stored_hash)
