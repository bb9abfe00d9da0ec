"""What one pass did: per promotion (`Outcome`) and as a whole (`PassResult`).

Plain values the pass fills in and `cli`, `demo` and tests read. No logic beyond views of the lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Problem
from .models import DecisionInputs, ReleaseLock
from .policy import Decision
from .policy_change import PolicyChange


@dataclass
class Outcome:
    """What happened to one promotion in this pass."""

    promotion_id: str
    environment: str
    release: str
    decision: Decision | None = None
    evidence: str | None = None
    """The evidence id written (allow/deny), or of the earlier record when already decided."""
    problem: str | None = None
    inputs: DecisionInputs | None = None


@dataclass
class PassResult:
    """What one pass read and wrote, decided, left pending, and could not do."""

    source_commit: str
    evidence_commit: str | None = None
    locked: list[ReleaseLock] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    transient: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    """Quota messages: work deferred by a hard limit, and soft-limit warnings."""
    races: int = 0
    policy: str | None = None
    """The ratified policy the decisions were made under."""
    ratification: str | None = None
    """The ratification record this pass wrote (genesis or an approved change), if any."""
    policy_change: PolicyChange | None = None
    """The branch's policy when it differs from the ratified one, and where its ratification stands."""
    ignored: list[str] = field(default_factory=list)
    """Statements on the evidence branch that were not believed (they do not verify), with why."""

    @property
    def recorded(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.decision and o.decision.result != "pending" and o.evidence]

    @property
    def pending(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.decision and o.decision.result == "pending"]
