"""API tokens of the fleet: made here, stored only as their SHA-256.

A token is `stl_` and 32 random bytes in URL-safe base64; the database keeps `token_hash(token)` (hex),
so that a copy of the database gives no way in. Pure: no database, no I/O.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "stl_"


def new_token() -> str:
    """A fresh random API token (the only time it exists in plain)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database stores of `token`: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
