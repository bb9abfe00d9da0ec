"""The inputs of one decision or ratification (`inputs/<hex>.json` on the evidence branch).

Everything a decision was made from, so that replaying it through the same gates gives the same decision.
Models only: building, hashing and signing them is `reconciler.evidence`'s and the loop's job.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .common import Digest, Name, UtcTime, _Model
from .environment import Environment
from .promotion import Promotion
from .release import ReleaseLock
from .settings import Governance


class InputActor(_Model):
    identity: str | None
    commit: str | None = None
    key: str | None = None
    verified: bool = False
    reason: str = ""
    code: str = ""
    time: UtcTime | None = None
    payload: str | None = None
    """Base64 of the commit's signed payload (what its SSH signature covers), for offline re-checks."""
    signature: str | None = None
    """The commit's armored SSH signature."""


class InputApproval(_Model):
    identity: str
    decision: Literal["approve", "reject"]
    release: str
    comment: str = ""
    signer: InputActor
    earlierSigners: list[str] = Field(default_factory=list)
    environment: str | None = None
    stale: bool = False


class InputVote(_Model):
    """One policy approval file, as a ratification saw it."""

    identity: str
    decision: Literal["approve", "reject"]
    comment: str = ""
    signer: InputActor
    counted: bool
    reason: str


class RatificationInputs(_Model):
    """Every input of one ratification: the policies, the rules it was judged by, the votes."""

    kind: Literal["RatificationInputs"] = "RatificationInputs"
    version: Literal[1] = 1
    tenant: Name
    sourceCommit: str
    policy: Digest
    previous: Digest | None
    changed: list[str]
    governance: Governance | None
    groups: dict[str, list[str]] = Field(default_factory=dict)
    authors: list[str] = Field(default_factory=list)
    approvals: list[InputVote] = Field(default_factory=list)
    decidedAt: UtcTime


class InputPrior(_Model):
    evidence: Digest
    environment: Name
    releaseId: Digest
    result: Literal["allow", "deny"]
    decidedAt: UtcTime


class InputGate(_Model):
    name: str
    version: str
    options: dict[str, Any] = Field(default_factory=dict)


class DecisionInputs(_Model):
    """Every input of one decision: replaying these through the same gates gives the same decision."""

    kind: Literal["DecisionInputs"] = "DecisionInputs"
    version: Literal[1] = 1
    tenant: Name
    sourceCommit: str
    promotionId: Name
    promotion: Promotion
    release: ReleaseLock
    environment: Environment
    requester: InputActor
    approvals: list[InputApproval] = Field(default_factory=list)
    groups: dict[str, list[str]] = Field(default_factory=dict)
    history: list[InputPrior] = Field(default_factory=list)
    gates: list[InputGate]
    requestedAt: UtcTime | None
    decidedAt: UtcTime
    template: dict[str, str] | None = None
    """`{path, sha256}` of the template the lock was rendered from (None: the built-in default)."""
    policy: Digest | None = None
    """The ratified policy the decision was made under (None: recorded before policies existed)."""
