"""Canonical bytes and content ids of what goes on the evidence branch.

PURE: values in, bytes and ids out; no disk, network, clock or Git. Everything stored is serialised
once, as RFC 8785 canonical JSON, and identified by the sha256 of exactly those bytes; nothing here
ever re-serialises bytes that were already stored or signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import rfc8785


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON bytes of a JSON-compatible value."""
    data: bytes = rfc8785.dumps(value)
    return data


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def release_id(name: str, pinned: Mapping[str, str]) -> str:
    """`sha256:` of the canonical JSON of `{"name": ..., "components": {name: "repo@sha256:..."}}`."""
    return "sha256:" + sha256_hex(canonical({"name": name, "components": dict(pinned)}))


def release_lock_path(name: str) -> str:
    return f"releases/{name}.json"
