"""Pydantic models of everything Stella reads from a repository.

Parse at the boundary: `manifests.py` turns YAML into these frozen models, and the core never sees a raw
dict. Every model forbids unknown fields and pins `apiVersion`/`kind`; names, identities, digests and
secret references are constrained strings. JSON Schemas in `schemas/` are generated from these models
(`python -m reconciler.schemas`) and a test fails when they drift. No I/O here.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    model_validator,
)

from . import reference
from .gates import validate_cron

API_VERSION = "stella/v1"

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_IDENTITY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9][A-Za-z0-9.-]{0,190}$"
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def _no_double_dot(value: str) -> str:
    if ".." in value:
        raise ValueError(f"{value!r} contains '..', which could escape a directory")
    return value


def _valid_duration(value: str) -> str:
    if not value or not _DURATION_RE.match(value) or parse_duration(value) <= timedelta(0):
        raise ValueError(f"invalid duration {value!r}: use e.g. 30m, 1h, 2d, 1h30m")
    return value


def _valid_image(value: str) -> str:
    try:
        reference.parse(value)
    except reference.ReferenceError as exc:
        raise ValueError(str(exc)) from None
    return value


def _valid_repo_path(value: str) -> str:
    parts = value.split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in value:
        raise ValueError(f"{value!r} must be a relative path inside the repository (no '..', no '/')")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} contains control characters")
    return value


def _valid_cron(value: str) -> str:
    validate_cron(value)
    return value


Name = Annotated[
    str,
    StringConstraints(pattern=_NAME_PATTERN),
    AfterValidator(_no_double_dot),
]
"""A manifest, component or environment name: safe as a single path component."""

Identity = Annotated[
    str,
    StringConstraints(pattern=_IDENTITY_PATTERN),
    AfterValidator(_no_double_dot),
]
"""A principal as `trust/allowed_signers` names it (an email address)."""

Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
Duration = Annotated[str, StringConstraints(pattern=r"^[0-9dhms]+$"), AfterValidator(_valid_duration)]
SecretRef = Annotated[
    str,
    StringConstraints(pattern=r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:/[^\x00-\x1f]+|plugin:[a-z0-9-]+:.+)$"),
]
"""Where a secret comes from, never the secret: `env:NAME`, `file:/path` or `plugin:<name>:<ref>`."""
ImageText = Annotated[str, AfterValidator(_valid_image)]
RepoPath = Annotated[str, AfterValidator(_valid_repo_path)]
Cron = Annotated[str, AfterValidator(_valid_cron)]


def parse_duration(value: str) -> timedelta:
    """`1h30m` -> timedelta(hours=1, minutes=30)."""
    match = _DURATION_RE.match(value)
    if not match:
        raise ValueError(f"invalid duration {value!r}")
    d, h, m, s = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=d, hours=h, minutes=m, seconds=s)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=False)


class _Manifest(_Model):
    apiVersion: Literal["stella/v1"]


# --- stella.yaml ---------------------------------------------------------------------------------


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


# --- environments/<env>.yaml ----------------------------------------------------------------------


class ApprovalPolicy(_Model):
    required: Annotated[int, Field(ge=0, le=100)] = 1
    groups: list[Name] = Field(default_factory=list)
    separationOfDuties: bool = True


class AbsoluteWindow(_Model):
    start: Annotated[AwareDatetime, Field(strict=False)]
    end: Annotated[AwareDatetime, Field(strict=False)]
    reason: str = ""
    exceptions: list[Identity] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ordered(self) -> AbsoluteWindow:
        if self.end <= self.start:
            raise ValueError("freeze window end must be after its start")
        return self


class RecurringWindow(_Model):
    cron: Cron
    duration: Duration
    reason: str = ""
    exceptions: list[Identity] = Field(default_factory=list)


def _window_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "recurring" if "cron" in value or "duration" in value else "absolute"
    return "recurring" if isinstance(value, RecurringWindow) else "absolute"


FreezeWindow = Annotated[
    Annotated[AbsoluteWindow, Tag("absolute")] | Annotated[RecurringWindow, Tag("recurring")],
    Discriminator(_window_kind),
]
"""Either `{start, end}` (absolute, UTC) or `{cron, duration}` (recurring, UTC)."""


class GateConfig(BaseModel):
    """One plugin gate; options beyond `plugin` belong to the plugin and are checked by it."""

    model_config = ConfigDict(extra="allow", frozen=True)
    plugin: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$")]

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Target(_Model):
    name: Name
    agent: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$")] = "docker"
    endpoint: str
    project: Name


def _pinned_image(value: str) -> str:
    try:
        ref = reference.parse(value)
    except reference.ReferenceError as exc:
        raise ValueError(str(exc)) from None
    if ref.digest is None or ref.tag is not None:
        raise ValueError(f"image {value!r} is not pinned by digest alone: write repo@sha256:<64 hex>")
    return value


def _host_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"host path {value!r} must be absolute")
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or "\\" in value:
        raise ValueError(f"host path {value!r} contains control characters or a backslash")
    if value != "/" and any(p in ("", ".", "..") for p in value[1:].split("/")):
        raise ValueError(f"host path {value!r} is not normalised: no '.', '..', '//' or trailing '/'")
    return value


PinnedImage = Annotated[str, AfterValidator(_pinned_image)]
"""An image reference pinned by digest alone: `repo@sha256:<64 hex>`, no tag."""
HostPath = Annotated[str, AfterValidator(_host_path)]
"""An absolute, normalised host path (`/srv/shop`)."""
Capability = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]
"""A Linux capability as `cap_add` names it (`NET_BIND_SERVICE`, `CAP_NET_ADMIN`, or `ALL`)."""


class HostAccess(_Model):
    """What a rendered lock may take from the host beyond an ordinary container (DESIGN §8).

    Everything defaults to refused; each field allows one thing explicitly, for this environment only.
    """

    privileged: bool = False
    """`privileged: true` (on a service or a `post_start`/`pre_stop` hook): every device and capability."""
    hostNamespaces: bool = False
    """`network_mode`, `pid`, `ipc`, `uts`, `userns_mode` or `cgroup` set to `host`, a network whose
    driver or name is `host`, and `cgroup_parent`."""
    hostPaths: list[HostPath] = Field(default_factory=list)
    """Absolute host path prefixes that bind mounts (and `o: bind` volumes, and `file:` configs and
    secrets) may use: `/srv/shop` allows `/srv/shop` and `/srv/shop/data`, not `/srv/shopping`.
    Relative and `~` bind sources are never allowed."""
    dockerSocket: bool = False
    """Mounting the container engine's socket (`/var/run/docker.sock`, `/run/docker.sock`, containerd's,
    any `…/docker.sock`, or a directory holding one, such as `/run` or `/`), which needs `hostPaths` to
    cover the path too; and `use_api_socket`."""
    capabilities: list[Capability] = Field(default_factory=list)
    """Capabilities `cap_add` may add (with or without `CAP_`); `ALL` only when listed itself."""
    devices: bool = False
    """`devices`, `device_cgroup_rules`, `gpus` and device reservations under `deploy.resources`."""
    securityOptions: bool = False
    """`security_opt` beyond `no-new-privileges` (e.g. `seccomp:unconfined`, `apparmor=…`, `label=…`)."""


class Environment(_Manifest):
    kind: Literal["Environment"]
    name: Name
    promotesFrom: Name | None = None
    soak: Duration | None = None
    approvals: ApprovalPolicy | None = None
    freezeWindows: list[FreezeWindow] = Field(default_factory=list)
    gates: list[GateConfig] = Field(default_factory=list)
    template: RepoPath | None = None
    variables: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = Field(
        default_factory=dict
    )
    secrets: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], SecretRef] = Field(
        default_factory=dict
    )
    targets: list[Target] = Field(default_factory=list)
    allowedImages: list[PinnedImage] = Field(default_factory=list)
    """Images a lock may run besides the release's components, each exactly as the template writes it,
    pinned by digest (`redis@sha256:<64 hex>`)."""
    hostAccess: HostAccess = Field(default_factory=HostAccess)
    """What a lock may take from the host; by default nothing (see `HostAccess`)."""

    @model_validator(mode="after")
    def _checks(self) -> Environment:
        if self.promotesFrom == self.name:
            raise ValueError("an environment cannot promote from itself")
        names = [t.name for t in self.targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate target name(s): {', '.join(dupes)}")
        clash = sorted(set(self.variables) & set(self.secrets))
        if clash:
            raise ValueError(f"name(s) both a variable and a secret: {', '.join(clash)}")
        return self

    @property
    def soak_time(self) -> timedelta:
        return parse_duration(self.soak) if self.soak else timedelta(0)


# --- releases/<release>.yaml ----------------------------------------------------------------------


class Component(_Model):
    image: ImageText
    digest: Digest | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Component:
        ref = reference.parse(self.image)
        if ref.digest and self.digest and ref.digest != self.digest:
            raise ValueError(f"image pins {ref.digest} but digest says {self.digest}")
        return self

    @property
    def ref(self) -> reference.ImageRef:
        return reference.parse(self.image)

    @property
    def pinned_digest(self) -> str | None:
        """The digest the file already fixes (field or `@sha256:` in the image), if any."""
        return self.digest or self.ref.digest


class Release(_Manifest):
    kind: Literal["Release"]
    name: Name
    components: Annotated[dict[Name, Component], Field(min_length=1)]


# --- promotions/<id>.yaml, approvals/<promotion>/<identity>.yaml, trust/groups.yaml ---------------


class Promotion(_Manifest):
    kind: Literal["Promotion"]
    release: Name
    environment: Name
    reason: str = ""


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


# --- the repository as a whole -------------------------------------------------------------------


class Repository(BaseModel):
    """Every manifest of a repository at one commit (or work tree), validated and cross-checked."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

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


# --- what the reconciler writes ------------------------------------------------------------------


class LockedComponent(_Model):
    image: str
    """The repository, without tag or digest (`registry.example.com/shop/web`)."""
    tag: str | None
    digest: Digest

    @property
    def pinned(self) -> str:
        return f"{self.image}@{self.digest}"


class ReleaseLock(_Model):
    """`releases/<name>.json` on the evidence branch: a release's digests, fixed once."""

    name: Name
    id: Digest
    components: dict[Name, LockedComponent]


# --- the inputs of one decision (inputs/<hex>.json) ----------------------------------------------

UtcTime = Annotated[AwareDatetime, Field(strict=False)]


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
