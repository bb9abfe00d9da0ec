"""What the report reads of the evidence branch before any page: an index, timelines and pointers.

`read_index()` keeps one small `Entry` per record (a few short strings), enough to order each
environment's timeline (and each target's: deployment records are chained per target), link records
across pages and attach findings; the records themselves are read again only while their page is
written (`records`, `deployments`).

Must not: hold whole records in memory, render anything, or write to the repository.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..ledger import DEPLOYMENT_TYPES, Ledger, pointer_path, target_chain
from .values import EVIDENCE_ID, as_dict, dicts, hex_of, href, text

if TYPE_CHECKING:
    from ..repo import GitTree

UNKNOWN_ENVIRONMENT = "(unknown)"
"""Where records whose statement names no environment (or cannot be read) are listed."""

_RECORD_NAME = re.compile(r"^([0-9a-f]{64})\.json$")


@dataclass(frozen=True)
class Entry:
    """What the report must know of a record before rendering any page (a few short strings)."""

    hex: str
    environment: str
    previous: str | None
    decided_at: str
    inputs: str | None
    artifacts: tuple[str, ...]
    release: str | None
    target: str | None = None
    """A deployment record's target (its chain is the target's, on its environment's page)."""
    result: str | None = None
    """A deployment record's result (`succeeded`, `failed`, or what it says)."""

    @property
    def chain(self) -> str:
        """The timeline the record is on: its environment's, or its target's (`ledger.target_chain`)."""
        return self.environment if self.target is None else target_chain(self.environment, self.target)


def read_index(tree: GitTree) -> dict[str, Entry]:
    """An entry per decision record of the branch (policy ratifications are not on any timeline)."""
    entries: dict[str, Entry] = {}
    for name in tree.listdir("evidence"):
        match = _RECORD_NAME.match(name)
        if not match:
            continue  # bundles, and files audit.verify already reports as unexpected
        hex_id = match.group(1)
        predicate = _predicate(Ledger(tree).statement_raw(hex_id))
        if predicate.get("type") == "policy_ratification":
            continue  # the policy chain is not an environment's timeline (`stella policy status`)
        env = text(predicate.get("environment")) or UNKNOWN_ENVIRONMENT
        previous = hex_of(predicate.get("previous"))
        inputs = as_dict(predicate.get("inputs")).get("sha256")
        target = _target(predicate, env)
        entries[hex_id] = Entry(
            hex=hex_id,
            environment=env,
            previous=previous,
            decided_at=text(predicate.get("decidedAt") or predicate.get("completedAt")),
            inputs=inputs if isinstance(inputs, str) else None,
            artifacts=tuple(text(a.get("sha256")) for a in dicts(predicate.get("artifacts"))),
            release=text(as_dict(predicate.get("release")).get("name")) or None,
            target=target,
            result=text(predicate.get("result")) if target is not None else None,
        )
    return entries


def _target(predicate: dict[str, Any], env: str) -> str | None:
    """The target whose chain holds a deployment record (None: not one, or one naming no target)."""
    if predicate.get("type") not in DEPLOYMENT_TYPES or env == UNKNOWN_ENVIRONMENT:
        return None
    name = as_dict(predicate.get("target")).get("name")
    return name if isinstance(name, str) and name else None


def _predicate(raw: bytes | None) -> dict[str, Any]:
    try:
        statement = json.loads(raw or b"")
    except ValueError:
        return {}
    return as_dict(statement.get("predicate")) if isinstance(statement, dict) else {}


def timelines(entries: Mapping[str, Entry]) -> dict[str, list[str]]:
    """Each chain's record ids (an environment's, a target's: `Entry.chain`), newest first: by position
    in the chain, then time, then id."""
    depth: dict[str, int] = {}
    for start in entries:
        path: list[str] = []
        seen: set[str] = set()
        current: str | None = start
        while current is not None and current not in depth and current not in seen:
            path.append(current)
            seen.add(current)
            entry = entries[current]
            previous = entry.previous
            if previous is None or previous not in entries or entries[previous].chain != entry.chain:
                current = None
            else:
                current = previous
        base = depth[current] + 1 if current is not None and current in depth else 0
        for offset, hex_id in enumerate(reversed(path)):
            depth[hex_id] = base + offset
    found: dict[str, list[str]] = {}
    for entry in entries.values():
        found.setdefault(entry.chain, []).append(entry.hex)
    for hexes in found.values():
        hexes.sort(key=lambda h: (depth[h], entries[h].decided_at, h), reverse=True)
    return found


def children(entries: Mapping[str, Entry]) -> dict[str, list[str]]:
    """Record id -> the ids of the records that name it as their previous one."""
    found: dict[str, list[str]] = {}
    for entry in entries.values():
        if entry.previous is not None:
            found.setdefault(entry.previous, []).append(entry.hex)
    return found


def pointer(tree: GitTree, env: str, entries: Mapping[str, Entry]) -> dict[str, Any] | None:
    """`environments/<env>/stella.version.json` as the page shows it (None: no pointer)."""
    raw = tree.read(pointer_path(env))
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {"readable": False}
    current = as_dict(data.get("current"))
    return {
        "readable": True,
        "head": link(text(data.get("head")), entries, env),
        "release": text(current.get("release")),
        "release_id": text(current.get("releaseId")),
        "evidence": link(text(current.get("evidence")), entries, env) if current else None,
        "decided_at": text(current.get("decidedAt")),
        "artifacts": sorted((text(k), text(v)) for k, v in as_dict(current.get("artifacts")).items()),
        "nothing": not current,
    }


def link(evidence_id: str, entries: Mapping[str, Entry], here: str | None) -> dict[str, Any]:
    """An evidence id, with a link to its record when the record is on the branch (from the page of
    `here`; None: from the index)."""
    match = EVIDENCE_ID.match(evidence_id)
    if match and match.group(1) in entries:
        hex_id = match.group(1)
        return {"id": evidence_id, "href": href(entries[hex_id].environment, hex_id, here)}
    return {"id": evidence_id, "href": None}
