"""Checkpoints: the signed statement of what the evidence branch held at one time (its head, record
count and each chain's head), made, signed and read back; and the `checkpoint` check that the branch
still holds everything a checkpoint covered.

Signs only through the `Signer` it is given; never writes a file (`cli` does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import rfc8785

from ..errors import InvalidInput
from ..ledger import rfc3339
from ..protocols import Signer
from ..repo import Repo
from ..sign import BundleError, TrustedKeys, verify_bundle
from .findings import Finding, Report
from .layout import _path
from .worker import _Fact, _Merged

CHECKPOINT_PAYLOAD_TYPE = "application/vnd.stella.checkpoint+json"
CHECKPOINT_TYPE = "https://stella.dev/checkpoint/v1"


@dataclass(frozen=True)
class Checkpoint:
    """What the evidence branch held at one time: its head, record count and each chain's head."""

    ref: str
    head: str
    records: int
    chains: Mapping[str, str]
    time: str

    def as_json(self) -> dict[str, Any]:
        return {
            "type": CHECKPOINT_TYPE,
            "ref": self.ref,
            "head": self.head,
            "records": self.records,
            "chains": dict(sorted(self.chains.items())),
            "time": self.time,
        }

    def payload(self) -> bytes:
        """The canonical (RFC 8785) bytes that are signed."""
        data: bytes = rfc8785.dumps(self.as_json())
        return data

    @classmethod
    def parse(cls, payload: bytes, source: str) -> Checkpoint:
        try:
            doc = json.loads(payload)
            if not isinstance(doc, dict) or doc.get("type") != CHECKPOINT_TYPE:
                raise ValueError(f"type is not {CHECKPOINT_TYPE}")
            chains = doc["chains"]
            if not isinstance(chains, dict) or not all(isinstance(v, str) for v in chains.values()):
                raise ValueError("chains must map environments to evidence ids")
            checkpoint = cls(
                str(doc["ref"]), str(doc["head"]), int(doc["records"]), dict(chains), str(doc["time"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{source}: not a Stella checkpoint: {exc}") from exc
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", checkpoint.head):
            raise InvalidInput(
                f"{source}: not a Stella checkpoint: head {checkpoint.head!r} is not a commit id"
            )
        return checkpoint


def make_checkpoint(report: Report, now: datetime) -> Checkpoint:
    """The checkpoint of a verified branch; `InvalidInput` when there is nothing to checkpoint."""
    if report.head is None:
        raise InvalidInput(f"{report.ref}: the evidence ref does not exist; nothing to checkpoint")
    return Checkpoint(report.ref, report.head, report.records, dict(report.chains), rfc3339(now))


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> bytes:
    """A Sigstore bundle (DSSE) over the checkpoint's canonical bytes."""
    return signer.sign(checkpoint.payload(), CHECKPOINT_PAYLOAD_TYPE)


def read_checkpoint(data: bytes, keys: TrustedKeys, source: str) -> Checkpoint:
    """The checkpoint in a file `stella audit checkpoint` wrote (the bundle, or its `-o json` output),
    after verifying its signature with `keys`. Anything else is `InvalidInput` (exit 2)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{source}: not a checkpoint file (not JSON: {exc})") from exc
    if isinstance(doc, dict) and isinstance(doc.get("bundle"), dict):
        doc = doc["bundle"]
        data = json.dumps(doc).encode()
    if not isinstance(doc, dict) or "dsseEnvelope" not in doc:
        raise InvalidInput(
            f"{source}: not a checkpoint file: expected the signed bundle `stella audit checkpoint` writes"
        )
    try:
        verified = verify_bundle(data, keys, source=source)
    except BundleError as exc:
        raise InvalidInput(f"checkpoint not trusted: {exc}") from exc
    if verified.payload_type != CHECKPOINT_PAYLOAD_TYPE:
        raise InvalidInput(
            f"{source}: signs a {verified.payload_type!r} payload, "
            f"not a checkpoint ({CHECKPOINT_PAYLOAD_TYPE})"
        )
    return Checkpoint.parse(verified.payload, source)


def _check_checkpoint(
    repo: Repo, ref: str, report: Report, merged: _Merged, checkpoint: Checkpoint
) -> list[Finding]:
    found: list[Finding] = []
    taken = f"the checkpoint of {checkpoint.time}"
    head = report.head or ""
    if checkpoint.ref != ref:
        found.append(Finding(ref, f"{taken} is of {checkpoint.ref}, not of {ref}", None, "checkpoint"))
    if not repo.is_ancestor(checkpoint.head, head):
        known = repo.resolve_ref(checkpoint.head) is not None
        where = "is not an ancestor of" if known else "is not in the history of"
        found.append(
            Finding(
                ref,
                f"{taken} was at {checkpoint.head[:12]}, which {where} today's head {head[:12]}: "
                "the branch was rewritten after the checkpoint",
                None,
                "checkpoint",
            )
        )
    if report.records < checkpoint.records:
        found.append(
            Finding(
                ref,
                f"{report.records} records today, fewer than the {checkpoint.records} {taken} covered",
                None,
                "checkpoint",
            )
        )
    facts = {f"sha256:{f.hex}": f for f in merged.facts}
    for env, evidence_id in sorted(checkpoint.chains.items()):
        fact = facts.get(evidence_id)
        if fact is None:
            found.append(
                Finding(
                    _path(evidence_id), f"the head of {env}'s chain at {taken} is gone", None, "checkpoint"
                )
            )
            continue
        if fact.environment != env or not _in_chain(facts, report.chains.get(env), evidence_id):
            found.append(
                Finding(
                    _path(evidence_id),
                    f"the head of {env}'s chain at {taken} is no longer in {env}'s chain",
                    None,
                    "checkpoint",
                )
            )
    return found


def _in_chain(facts: Mapping[str, _Fact], head: str | None, wanted: str) -> bool:
    seen: set[str] = set()
    current = head
    while current is not None and current not in seen:
        if current == wanted:
            return True
        seen.add(current)
        fact = facts.get(current)
        current = fact.previous if fact is not None else None
    return False


def checkpoint_json(checkpoint: Checkpoint, bundle: bytes) -> dict[str, Any]:
    """What `stella audit checkpoint -o json` prints (and `verify --checkpoint` accepts back)."""
    return {"checkpoint": checkpoint.as_json(), "bundle": json.loads(bundle)}
