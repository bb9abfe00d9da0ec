"""`promotions/<id>.yaml`, `approvals/<promotion>/<identity>.yaml` and `trust/groups.yaml`.

A promotion asks for a release in an environment; approvals (of a promotion, or of a policy) answer it;
groups say who may approve. Models only: whether an approval counts (signatures, staleness) is decided
elsewhere, never here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import Digest, Identity, Name, _Manifest


class Promotion(_Manifest):
    kind: Literal["Promotion"]
    release: Name
    environment: Name
    reason: str = ""
    rollback: bool = False
    """A rollback (`stella rollback`): back to a release this environment was allowed before."""


class Approval(_Manifest):
    """`approvals/<promotion>/<identity>.yaml`: bound to the promotion, its release id and (when given)
    its environment; it counts only from a commit the identity signed after the promotion's last change."""

    kind: Literal["Approval"]
    promotion: Name
    release: Digest
    environment: Name | None = None
    decision: Literal["approve", "reject"]
    comment: str = ""


class PolicyApproval(_Manifest):
    """`approvals/policy-<hex>/<identity>.yaml`: approves (or rejects) ratifying policy `sha256:<hex>`."""

    kind: Literal["Approval"]
    policy: Digest
    decision: Literal["approve", "reject"]
    comment: str = ""


class Groups(_Manifest):
    kind: Literal["Groups"]
    groups: dict[Name, list[Identity]] = Field(default_factory=dict)
