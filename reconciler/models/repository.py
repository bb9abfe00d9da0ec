"""Every manifest of a repository at one commit, and the manifest kinds the loader and schemas know.

It only gathers the other models: it must not load files (`reconciler.manifests` does) nor define
manifest fields of its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .environment import Environment
from .promotion import Approval, Groups, PolicyApproval, Promotion
from .release import Release
from .settings import Settings


class Repository(BaseModel):
    """Every manifest of a repository at one commit (or work tree), validated and cross-checked."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, defer_build=True)

    settings: Settings
    environments: dict[str, Environment]
    releases: dict[str, Release]
    promotions: dict[str, Promotion]
    approvals: dict[str, dict[str, Approval]]
    groups: Groups
    commit: str | None = None
    policy_approvals: dict[str, dict[str, PolicyApproval]] = Field(default_factory=dict)
    """`approvals/policy-<hex>/` by policy hex, then identity."""
    problems: tuple[Any, ...] = ()
    """Problems (`errors.Problem`) of promotion, approval and release files left out of a contained
    load: each holds up only what depends on it."""


MANIFEST_MODELS: dict[str, type[BaseModel]] = {
    "Settings": Settings,
    "Environment": Environment,
    "Release": Release,
    "Promotion": Promotion,
    "Approval": Approval,
    "PolicyApproval": PolicyApproval,
    "Groups": Groups,
}
