"""`environments/<env>.yaml`: an environment's promotion rules, freeze windows, gates, template and hosts.

Models only: it must not read files nor judge anything (the gates evaluate these rules; `render` applies
`hostAccess`).
"""

from __future__ import annotations

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

from .. import reference
from .common import Cron, Duration, Identity, Name, RepoPath, SecretRef, _Manifest, _Model, parse_duration


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

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True)
    plugin: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$")]

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Target(_Model):
    name: Name
    agent: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$")] = "docker"
    endpoint: str
    project: Name
    labels: dict[Name, str] = Field(default_factory=dict)


class Rollout(_Model):
    """How a decision reaches the environment's targets (DESIGN §9)."""

    strategy: Literal["all-at-once", "rolling"] = "all-at-once"
    batchSize: Annotated[int, Field(ge=1, le=1000)] = 1
    """With `rolling`: targets per batch, in list order; a batch waits for every target of the batches
    before it to have a `succeeded` record of the decision, and a failure halts the rest."""
    healthTimeout: Duration = "120s"
    """How long `up --wait` and the HTTP checks may take to see every service healthy."""
    autoRollback: bool = True
    """When `up` or a health check fails: re-apply the lock of the target's previous sticker."""

    @property
    def health_timeout(self) -> timedelta:
        return parse_duration(self.healthTimeout)


class HealthCheck(_Model):
    """An HTTP check the agent runs against one service after `up --wait` (`health: {web: {url: …}}`)."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")]
    expectStatus: Annotated[int, Field(ge=100, le=599)] = 200
    timeout: Duration = "30s"
    """How long the agent keeps asking before the check fails (also bounded by `healthTimeout`)."""

    @property
    def timeout_delta(self) -> timedelta:
        return parse_duration(self.timeout)


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
    rollout: Rollout = Field(default_factory=Rollout)
    health: dict[Name, HealthCheck] = Field(default_factory=dict)
    """HTTP checks per service, run by the agent after `up --wait`."""
    driftPolicy: Literal["report", "remediate"] = "report"
    """What an agent does when the target drifts from its lock: record it (`report`), or also apply the
    lock again (`remediate`)."""
    rollbackApprovals: ApprovalPolicy | None = None
    """Approvals a rollback promotion needs (`stella rollback`); default: `approvals`."""

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
