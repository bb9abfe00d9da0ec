"""Canonical bytes and content ids of what goes on the evidence branch.

Paths and the time format come from `ledger` (re-exported here for older callers). PURE: values in,
bytes and ids out; no disk, network, clock or Git. Everything stored is serialised
once, as RFC 8785 canonical JSON, and identified by the sha256 of exactly those bytes; nothing here
ever re-serialises bytes that were already stored or signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import rfc8785

from . import reference
from .ledger import (  # noqa: F401  (paths re-exported until every reader imports them from ledger)
    artifact_path,
    bundle_path,
    evidence_path,
    inputs_path,
    pointer_path,
    release_lock_path,
    rfc3339,
)

if TYPE_CHECKING:
    from .models import ReleaseLock
    from .protocols import GateResult


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON bytes of a JSON-compatible value."""
    data: bytes = rfc8785.dumps(value)
    return data


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def release_id(name: str, pinned: Mapping[str, str]) -> str:
    """`sha256:` of the canonical JSON of `{"name": ..., "components": {name: "repo@sha256:..."}}`."""
    return "sha256:" + sha256_hex(canonical({"name": name, "components": dict(pinned)}))


# --- decision records ----------------------------------------------------------------------------

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://stella.dev/attestations/evidence/v1"
GENERATOR = "stella"


def gate_json(result: GateResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "gate": result.gate,
        "status": result.status,
        "reason": result.reason,
        "message": result.message,
    }
    if result.retry_at is not None:
        out["retryAt"] = rfc3339(result.retry_at)
    if result.facts:
        out["facts"] = dict(result.facts)
    return out


def subjects(release: ReleaseLock, extra_images: Sequence[str] = ()) -> list[dict[str, Any]]:
    """in-toto subjects: each component image, and each of `extra_images` (`repo@sha256:...`, such as
    the images of the rendered lock), with its digest; unique, sorted by name then digest.

    Without extra images (or with only the components' own), the subjects are the components' alone.
    Raises ValueError for an extra image that is not pinned by digest alone.
    """
    items = {(c.image, c.digest) for c in release.components.values()}
    for text in extra_images:
        ref = reference.parse(text)
        if ref.digest is None or ref.tag is not None:
            raise ValueError(f"subject image {text!r} is not pinned by digest alone (repo@sha256:<64 hex>)")
        items.add((ref.repo, ref.digest))
    return [
        {"name": image, "digest": {"sha256": digest.removeprefix("sha256:")}}
        for image, digest in sorted(items)
    ]


def decision_statement(
    *,
    record_type: str,
    tenant: str,
    version: str,
    release: ReleaseLock,
    environment: str,
    promotion_id: str,
    promotion: Mapping[str, Any],
    actors: Mapping[str, Any],
    result: str,
    gates: Sequence[GateResult],
    artifacts: Mapping[str, str],
    inputs_hex: str,
    requested_at: datetime | None,
    decided_at: datetime,
    previous: str | None,
    extra_images: Sequence[str] = (),
) -> dict[str, Any]:
    """The in-toto Statement v1 of one decision (a plain JSON value; `canonical()` makes its bytes).

    `extra_images` are further images the decision covers (`render.lock_images()` of the lock: the
    components' and the environment's `allowedImages` it runs); each becomes a subject too.
    """
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects(release, extra_images),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "type": record_type,
            "tenant": tenant,
            "generator": {"name": GENERATOR, "version": version},
            "release": release.model_dump(mode="json"),
            "environment": environment,
            "promotion": {"id": promotion_id, **promotion},
            "actors": dict(actors),
            "decision": {
                "result": result,
                "gates": [gate_json(g) for g in gates],
                "reasons": sorted(f"{g.gate}/{g.reason}" for g in gates),
            },
            "artifacts": [{"name": n, "sha256": h} for n, h in sorted(artifacts.items())],
            "inputs": {"sha256": inputs_hex},
            "requestedAt": rfc3339(requested_at) if requested_at else None,
            "decidedAt": rfc3339(decided_at),
            "previous": previous,
        },
    }


def pointer(
    *,
    environment: str,
    head: str,
    current: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """`environments/<env>/stella.version.json`: the chain head, and what the environment should run.

    `current` is the last allowed release with its evidence id and artifacts (None: nothing yet).
    """
    return {"environment": environment, "head": head, "current": dict(current) if current else None}
