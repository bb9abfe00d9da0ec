"""What the evidence branch already says: decided promotions, each environment's chain and records.

An `EvidenceIndex` is a read-only summary built from the evidence tree at one commit. It is what the
reconciler needs to decide (is this promotion decided? what did the prior environment allow, when? where
does each environment's chain end?) without re-reading every record on every pass: `build()` reads the
records once, and `extend()` adds only the records of newer commits. No writing, no network.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .errors import InvalidInput
from .protocols import PriorDecision
from .repo import GitTree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """The parts of one evidence statement the reconciler looks at again."""

    evidence: str
    record_type: str
    environment: str
    promotion: str | None
    release_id: str
    release_name: str
    result: str
    decided_at: datetime
    previous: str | None
    artifacts: dict[str, str]

    def prior(self) -> PriorDecision:
        result: Literal["allow", "deny"] = "allow" if self.result == "allow" else "deny"
        return PriorDecision(self.evidence, self.environment, self.release_id, result, self.decided_at)


def parse_record(evidence_id: str, raw: bytes, source: str) -> Record:
    try:
        statement: dict[str, Any] = json.loads(raw)
        p = statement["predicate"]
        decision = p.get("decision") or {}
        return Record(
            evidence=evidence_id,
            record_type=p["type"],
            environment=p["environment"],
            promotion=(p.get("promotion") or {}).get("id"),
            release_id=p["release"]["id"],
            release_name=p["release"]["name"],
            result=decision.get("result", "allow"),
            decided_at=datetime.fromisoformat(p["decidedAt"]),
            previous=p.get("previous"),
            artifacts={a["name"]: a["sha256"] for a in p.get("artifacts", [])},
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{source}: not a Stella evidence statement: {exc}") from exc


@dataclass
class EvidenceIndex:
    """Decided promotions and per-environment records, as of evidence commit `head`."""

    head: str | None = None
    records: dict[str, Record] = field(default_factory=dict)
    by_promotion: dict[str, str] = field(default_factory=dict)
    chain_heads: dict[str, str] = field(default_factory=dict)

    def add(self, record: Record) -> None:
        self.records[record.evidence] = record
        if record.promotion and record.record_type == "release_decision":
            self.by_promotion.setdefault(record.promotion, record.evidence)
        current = self.chain_heads.get(record.environment)
        if current is None or record.previous == current:
            self.chain_heads[record.environment] = record.evidence

    def decided(self, promotion_id: str) -> str | None:
        return self.by_promotion.get(promotion_id)

    def priors(self, environment: str, release_id: str) -> list[PriorDecision]:
        return sorted(
            (
                r.prior()
                for r in self.records.values()
                if r.environment == environment
                and r.release_id == release_id
                and r.record_type == "release_decision"
            ),
            key=lambda p: (p.decided_at, p.evidence),
        )

    def current(self, environment: str) -> Record | None:
        """The latest allowed record of the environment (what it should run)."""
        head = self.chain_heads.get(environment)
        while head is not None:
            record = self.records.get(head)
            if record is None:
                return None
            if record.result == "allow":
                return record
            head = record.previous
        return None


def build(tree: GitTree | None, head: str | None) -> EvidenceIndex:
    """Read every statement under `evidence/` of the tree (chains are ordered by their links)."""
    index = EvidenceIndex(head=head)
    if tree is None:
        return index
    records = []
    for name in tree.listdir("evidence"):
        if not name.endswith(".json") or name.endswith(".sigstore.json"):
            continue
        hex_id = name.removesuffix(".json")
        raw = tree.read(f"evidence/{name}") or b""
        records.append(parse_record(f"sha256:{hex_id}", raw, f"evidence/{name}"))
    by_previous = {r.previous: r for r in records}
    # Walk each environment's chain from its root so that chain_heads end at the newest record.
    for root in sorted((r for r in records if r.previous is None), key=lambda r: r.evidence):
        record: Record | None = root
        while record is not None:
            index.add(record)
            record = by_previous.get(record.evidence)
    for record in records:  # records not reachable from a root (broken chain): still indexed
        if record.evidence not in index.records:
            index.records[record.evidence] = record
    return index
