"""API tokens of the fleet: made here, stored only as their SHA-256.

A token is `stl_` and 32 random bytes in URL-safe base64; the database keeps `token_hash(token)` (hex),
so that a copy of the database gives no way in. A token is named by its id, the first `ID_LENGTH` hex
digits of that hash (`printf %s "$TOKEN" | sha256sum | cut -c1-12`): enough to list and revoke it, not
to use it. Pure: no database, no I/O.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "stl_"
ID_LENGTH = 12
MIN_ID_LENGTH = 8
"""The shortest prefix of an id `stella fleet token revoke` takes."""


def new_token() -> str:
    """A fresh random API token (the only time it exists in plain)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database stores of `token`: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_id(stored_hash: str) -> str:
    """The id a token is listed and revoked by: the start of its stored hash."""
    return stored_hash[:ID_LENGTH]
