"""`stella.yaml`: the tenant's settings (registries, signer, evidence location, limits, governance).

Models only: it must not read the file (`reconciler.manifests` does) nor import the other manifests.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from .common import Name, RepoPath, SecretRef, _Manifest, _Model


class RegistrySettings(_Model):
    """How to reach one registry host."""

    host: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.\-\[\]:]+$", max_length=255)]
    plugin: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$")] = "oci"
    insecure: bool = False
    path: RepoPath | None = None
    credentials: SecretRef | None = None
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)


class SignerSettings(_Model):
    plugin: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$")] = "key"
    key: SecretRef = "env:STELLA_SIGNING_KEY"


class EvidenceSettings(_Model):
    ref: Annotated[str, StringConstraints(pattern=r"^refs/heads/[A-Za-z0-9._/-]+$")] = (
        "refs/heads/stella/evidence"
    )


class Limit(_Model):
    hard: Annotated[int, Field(ge=0)]
    soft: Annotated[int, Field(ge=0)] | None = None


class Limits(_Model):
    environments: Limit | None = None
    newDigestsPerDay: Limit | None = None
    deploymentsPerDay: Limit | None = None


class Governance(_Model):
    """Who ratifies a change of the policy (the governed files, DESIGN §8): N approvals from the groups,
    under the policy already ratified; with separation of duties, not by the change's own authors."""

    required: Annotated[int, Field(ge=1, le=100)]
    groups: Annotated[list[Name], Field(min_length=1)]
    separationOfDuties: bool = True


class Settings(_Manifest):
    """`stella.yaml`: tenant, registries, signer, evidence location, limits, offline, governance."""

    kind: Literal["Settings"]
    tenant: Name
    branch: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._/-]+$")] = "main"
    offline: bool = False
    mirror: RepoPath = "mirror"
    registries: list[RegistrySettings] = Field(default_factory=list)
    signer: SignerSettings = Field(default_factory=SignerSettings)
    evidence: EvidenceSettings = Field(default_factory=EvidenceSettings)
    limits: Limits = Field(default_factory=Limits)
    governance: Governance | None = None

    @model_validator(mode="after")
    def _unique_hosts(self) -> Settings:
        seen: set[str] = set()
        for r in self.registries:
            if r.host in seen:
                raise ValueError(f"registry host {r.host!r} is listed twice")
            seen.add(r.host)
        return self
