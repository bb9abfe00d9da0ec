"""The `clock` and `evidence` checks, from a cheap read of the evidence ref.

Reads the evidence ref's head, each environment's pointer, the chain head it names (statement and
bundle present) and the newest decision time; the clock must not be before it. `stella audit verify`
is the full audit: nothing here checks a hash or a signature.

Must not: write anything (not even the evidence index cache), or read more than the pointers and the
chain heads they name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..errors import StellaError
from ..ledger import bundle_path, evidence_path, pointer_path
from ..repo import Repo
from ..timefmt import evidence_time
from .result import Check, error_text


@dataclass
class EvidenceState:
    """What the evidence ref says, read cheaply: its head, each pointer, and the newest decision."""

    head: str | None
    problems: list[str] = field(default_factory=list)
    chains: int = 0
    newest: tuple[datetime, str] | None = None


def read_evidence(repo: Repo, ref: str) -> EvidenceState:
    head = repo.resolve_ref(ref)
    found = EvidenceState(head)
    if head is None:
        return found
    try:
        tree = repo.tree(head)
    except StellaError as exc:
        found.problems.append(str(exc))
        return found
    for env in sorted(tree.listdir("environments")):
        path = pointer_path(env)
        raw = tree.read(path)
        if raw is None:
            continue
        found.chains += 1
        try:
            data = json.loads(raw)
            head_id = str(data["head"])
        except (ValueError, KeyError, TypeError) as exc:
            found.problems.append(f"{path}: not a pointer: {error_text(exc)}")
            continue
        hex_id = head_id.removeprefix("sha256:")
        statement = tree.read(evidence_path(hex_id))
        if statement is None:
            found.problems.append(
                f"{path}: its head {head_id} is not on the branch ({evidence_path(hex_id)})"
            )
            continue
        if tree.read(bundle_path(hex_id)) is None:
            found.problems.append(
                f"{path}: its head {head_id} has no signature bundle ({bundle_path(hex_id)})"
            )
        try:
            decided = datetime.fromisoformat(json.loads(statement)["predicate"]["decidedAt"])
        except (ValueError, KeyError, TypeError) as exc:
            found.problems.append(f"{evidence_path(hex_id)}: no readable decidedAt: {error_text(exc)}")
            continue
        if decided.tzinfo is None:
            decided = decided.replace(tzinfo=UTC)
        if found.newest is None or decided > found.newest[0]:
            found.newest = (decided, env)
    return found


def clock_check(evidence: EvidenceState, now: datetime) -> Check:
    if evidence.newest is None:
        return Check("clock", "ok", f"{_utc(now)}; no evidence decision to compare it with yet")
    newest, env = evidence.newest
    if now < newest:
        return Check(
            "clock",
            "warn",
            f"the system clock ({_utc(now)}) is before the newest evidence decision ({_utc(newest)}, "
            f"environment {env}): new records would seem older than it; check the clock (NTP)",
        )
    return Check("clock", "ok", f"{_utc(now)}, after the newest evidence decision ({_utc(newest)})")


def _utc(moment: datetime) -> str:
    return evidence_time(moment)


def evidence_check(evidence: EvidenceState, ref: str) -> Check:
    if evidence.head is None and evidence.problems:
        return Check("evidence", "fail", evidence.problems[0])
    if evidence.head is None:
        return Check("evidence", "ok", f"{ref} does not exist yet: the first recorded decision creates it")
    where = f"{ref} at {evidence.head[:12]}"
    if evidence.problems:
        message = f"{where}: {len(evidence.problems)} problem(s), first: {evidence.problems[0]}"
        return Check("evidence", "fail", message, tuple(evidence.problems))
    return Check(
        "evidence",
        "ok",
        f"{where}: {evidence.chains} environment chain head(s) present (`stella audit verify` checks it all)",
    )
