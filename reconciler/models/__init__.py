"""Pydantic models of everything Stella reads from a repository, and of what it writes beside it.

Parse at the boundary: `manifests.py` turns YAML into these frozen models, and the core never sees a raw
dict. Every model forbids unknown fields and pins `apiVersion`/`kind`; names, identities, digests and
secret references are constrained strings. JSON Schemas in `schemas/` are generated from these models
(`python -m reconciler.schemas`) and a test fails when they drift. No I/O here.

The models are the bottom layer: they must not import gates, policy, evidence or anything that does.
By concern: `common` (base models, constrained strings), `settings` (`stella.yaml`), `environment`
(`environments/`), `release` (releases and their locks), `promotion` (promotions, approvals, groups),
`repository` (all manifests of one commit) and `inputs` (the recorded inputs of a decision). Import
from `reconciler.models`, which re-exports them all.
"""

from .common import (
    API_VERSION,
    Cron,
    Digest,
    Duration,
    Identity,
    ImageText,
    Name,
    RepoPath,
    SecretRef,
    UtcTime,
    parse_duration,
)
from .environment import (
    AbsoluteWindow,
    ApprovalPolicy,
    Capability,
    Environment,
    FreezeWindow,
    GateConfig,
    HealthCheck,
    HostAccess,
    HostPath,
    PinnedImage,
    RecurringWindow,
    Rollout,
    Target,
)
from .inputs import (
    DecisionInputs,
    InputActor,
    InputApproval,
    InputGate,
    InputPrior,
    InputVote,
    RatificationInputs,
)
from .promotion import Approval, Groups, PolicyApproval, Promotion
from .release import Component, LockedComponent, Release, ReleaseLock
from .repository import MANIFEST_MODELS, Repository
from .settings import (
    EvidenceSettings,
    Governance,
    Limit,
    Limits,
    RegistrySettings,
    Settings,
    SignerSettings,
)

__all__ = [
    "API_VERSION",
    "MANIFEST_MODELS",
    "AbsoluteWindow",
    "Approval",
    "ApprovalPolicy",
    "Capability",
    "Component",
    "Cron",
    "DecisionInputs",
    "Digest",
    "Duration",
    "Environment",
    "EvidenceSettings",
    "FreezeWindow",
    "GateConfig",
    "Governance",
    "Groups",
    "HealthCheck",
    "HostAccess",
    "HostPath",
    "Identity",
    "ImageText",
    "InputActor",
    "InputApproval",
    "InputGate",
    "InputPrior",
    "InputVote",
    "Limit",
    "Limits",
    "LockedComponent",
    "Name",
    "PinnedImage",
    "PolicyApproval",
    "Promotion",
    "RatificationInputs",
    "RecurringWindow",
    "RegistrySettings",
    "Release",
    "ReleaseLock",
    "RepoPath",
    "Repository",
    "Rollout",
    "SecretRef",
    "Settings",
    "SignerSettings",
    "Target",
    "UtcTime",
    "parse_duration",
]
