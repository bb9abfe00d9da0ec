"""The plugin interfaces of Stella, and the API version they are checked against.

A plugin is an object found through an entry point (`stella.registries`, `stella.gates`, `stella.signers`,
`stella.agents`, `stella.doctor`). It carries a `manifest` and satisfies the Protocol of its kind; the
loader (`discover.py`) checks both. Some kinds have optional capabilities, each a Protocol of its own
that a caller checks with `isinstance` before using it: `RegistryAttachments` and `RegistryProbe` of a
`Registry`, `VerifierPlugin` of a signer plugin. Plugins take and return value objects; they never print
or exit. This module holds only interfaces and value types: no I/O.

Plugin authors import these names from `reconciler.api`, never from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing the Protocols must not load pydantic (CLI start-up)
    from .models import Environment, Promotion, ReleaseLock
    from .reference import ImageRef

PLUGIN_API_VERSION = 1
"""Bumped on every incompatible change of a Protocol below; plugins declare the version they target."""


@dataclass(frozen=True)
class PluginManifest:
    """What a plugin says about itself (shown by `stella doctor`)."""

    name: str
    version: str
    kinds: tuple[str, ...]
    """What it provides, singular: "registry", "gate", "signer", "agent", "doctor"."""
    network: bool
    api_version: int = PLUGIN_API_VERSION
    description: str = ""


class FileSource(Protocol):
    """Read-only access to the files of a repository (a Git tree or a directory)."""

    def read(self, path: str) -> bytes | None:
        """The bytes of the file at `path` (POSIX, relative), or None when there is none."""
        ...

    def listdir(self, path: str) -> list[str]:
        """The names directly under directory `path` (empty when there is no such directory)."""
        ...


@dataclass(frozen=True)
class RegistryOptions:
    """One `registries:` entry of `stella.yaml`, as a plugin sees it."""

    host: str
    insecure: bool = False
    path: str | None = None
    credentials: str | None = None
    options: Mapping[str, object] = field(default_factory=dict)


@runtime_checkable
class Registry(Protocol):
    """Resolves image references to manifest digests. Must be safe to call from several threads.

    A registry may also offer `RegistryAttachments` (what is attached to an image, for gates) and
    `RegistryProbe` (a health probe, for `stella doctor`); callers check with `isinstance`.
    """

    def resolve(self, ref: ImageRef) -> str:
        """The `sha256:` digest the tag (or digest) of `ref` names now.

        Raises `InvalidInput` when the image or tag does not exist, `RegistryUnavailable` when the
        registry cannot be reached after retries.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class RegistryPlugin(Protocol):
    """Entry point object of group `stella.registries`: a factory of `Registry` values."""

    manifest: PluginManifest

    def open(self, options: RegistryOptions, files: FileSource) -> Registry:
        """A Registry for one configured host; `files` reads the user's repository (for mirrors)."""
        ...


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor, as an image index lists it (e.g. one referrer of an image)."""

    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)


@runtime_checkable
class RegistryAttachments(Protocol):
    """What a `Registry` may offer gates: the artifacts attached to an image (signatures, SBOMs),
    read by digest. Small reads only: never image layers.
    """

    def referrers(self, ref: ImageRef, artifact_type: str | None = None) -> Sequence[Descriptor]:
        """The manifests whose `subject` is `ref`'s digest (OCI 1.1 referrers), only those of
        `artifact_type` when it is given. `ref` must have a digest."""
        ...

    def manifest(self, ref: ImageRef) -> tuple[bytes, str]:
        """The exact bytes and the media type of the manifest `ref` names, checked against its digest.
        A missing manifest is `InvalidInput`."""
        ...

    def blob(self, repository: str, digest: str) -> bytes:
        """The bytes of a small blob of `repository`, checked to hash to `digest`. A missing blob is
        `InvalidInput`; an oversized one or bytes that do not match are `RegistryUnavailable`."""
        ...


@dataclass(frozen=True)
class RegistryPing:
    """What a registry answered to a health probe (`stella doctor`'s `registries` check)."""

    request: str
    """What was asked, for people: `GET https://registry.example.com/v2/`."""
    healthy: bool
    """The answer is one a working registry gives (for the distribution API: 200, or 401 before login)."""
    status: int | None = None
    """The status it answered with (HTTP for the distribution API); None when it did not answer."""
    error: str = ""
    """Why it did not answer (`ConnectError: …`), when it did not."""


@runtime_checkable
class RegistryProbe(Protocol):
    """What a `Registry` may offer `stella doctor`: one cheap request that tells whether it is up."""

    def ping(self, timeout: float) -> RegistryPing:
        """Ask once, waiting at most `timeout` seconds, without retries. Never raises for what the
        registry answers or for a failed connection: both are in the `RegistryPing`."""
        ...


# --- gates ---------------------------------------------------------------------------------------

GateStatus = Literal["pass", "fail", "pending", "error"]


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate: a status, a stable reason code, and a message for people.

    `retry_at` (pending only) says when the gate could next pass, if known (end of a freeze, end of a
    soak). `facts` are JSON-compatible details worth keeping in the evidence (e.g. a report digest).
    """

    gate: str
    status: GateStatus
    reason: str
    message: str
    retry_at: datetime | None = None
    facts: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PriorDecision:
    """One recorded decision of another environment, as the environment-order gate needs it."""

    evidence: str
    environment: str
    release_id: str
    result: Literal["allow", "deny"]
    decided_at: datetime


@dataclass(frozen=True)
class Actor:
    """A person, as identified from a signature (never from what a file claims)."""

    identity: str | None
    commit: str | None = None
    key: str | None = None
    """Fingerprint of the key that signed the commit."""
    verified: bool = False
    reason: str = ""
    """Why the identity is not verified, when it is not."""
    code: str = ""
    """That reason as a stable code: unsigned, not-ssh, unknown-key, bad-signature, no-trusted-keys."""
    time: datetime | None = None
    """When the signed commit was made (its author time)."""


@dataclass(frozen=True)
class ApprovalRecord:
    """One approval file of a promotion, with who actually signed the commit that wrote it."""

    identity: str
    """Who the file says it is from (its file name)."""
    decision: Literal["approve", "reject"]
    release: str
    """The release id the approval is bound to."""
    comment: str
    signer: Actor
    """The verified (or not) signer of the last commit that changed the file."""
    earlier_signers: tuple[str, ...] = ()
    """Verified signers of earlier versions of the file (to tell a changed approval from a forged one)."""
    environment: str | None = None
    """The environment the approval is bound to (None: the file names none)."""
    stale: bool = False
    """The approval's commit does not descend from the promotion file's last change."""


@dataclass(frozen=True)
class GateContext:
    """Everything a gate may look at. Pure data: gates do no I/O of their own besides plugin data
    handed in by the core; the time is `now`, never the clock."""

    now: datetime
    promotion_id: str
    promotion: Promotion
    release: ReleaseLock
    environment: Environment
    options: Mapping[str, Any]
    requester: Actor
    history: tuple[PriorDecision, ...] = ()
    approvals: tuple[ApprovalRecord, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    files: FileSource | None = None
    """The repository at the decision's source commit (read-only), with every governed file
    (`stella.yaml`, `environments/`, `templates/`, `trust/`) served from the ratified policy: where
    offline data such as `mirror/reports/` and trust material such as image keys live. Replay reads
    the same commit and policy again."""
    mirror: str = "mirror"
    """The offline data directory in `files` (stella.yaml `mirror:`)."""
    offline: bool = False
    registries: Callable[[ImageRef], Registry] | None = None
    """The registry serving an image, as the core opened it from `stella.yaml`'s `registries:` entry
    for the image's host (credentials, `insecure`, options; in offline mode the mirror). The core owns
    and closes it: a gate never does. It may raise a `StellaError` (no usable registry plugin for the
    host). Whether it offers more than `Registry` (e.g. `RegistryAttachments`) is checked with
    `isinstance`. None when the core offers no registries (a gate run on its own, in a test)."""


@runtime_checkable
class Gate(Protocol):
    """Entry point object of group `stella.gates`."""

    manifest: PluginManifest

    def evaluate(self, ctx: GateContext) -> GateResult:
        """Judge one promotion. May raise: the core turns an exception into an `error` result."""
        ...


# --- signers -------------------------------------------------------------------------------------

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


@runtime_checkable
class Signer(Protocol):
    """Signs evidence: a DSSE envelope over exactly `payload`, in a Sigstore bundle v0.3."""

    def sign(self, payload: bytes, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> bytes:
        """The bundle's JSON bytes."""
        ...


class BundleVerifier(Protocol):
    """Verifies bundles a signer plugin makes, offline, with trust material from the repository."""

    def verify(self, bundle: bytes, payload: bytes, *, source: str) -> str:
        """The signer's identity when `bundle` is a valid signature over exactly `payload`; raises a
        `StellaError` (naming `source`) otherwise."""
        ...


@runtime_checkable
class SignerPlugin(Protocol):
    """Entry point object of group `stella.signers`: makes a Signer from settings and environment."""

    manifest: PluginManifest

    def open(self, key: str, environ: Mapping[str, str]) -> Signer:
        """`key` is the settings' reference (`env:NAME`, `file:/path`); `environ` the process env."""
        ...


@runtime_checkable
class VerifierPlugin(Protocol):
    """What a signer plugin may offer besides signing: verifying the bundles it makes, offline."""

    def open_verifier(self, files: FileSource) -> BundleVerifier | None:
        """A verifier under the trust material in `files` (the repository, or the part of it an audit
        keeps), or None when `files` configures none for this plugin."""
        ...


@dataclass(frozen=True)
class TrustFile:
    """One file of a verifier plugin's trust material in the repository."""

    path: str
    trusted_root: bool = False
    """A Sigstore trusted root (what `cosign --trusted-root` takes): an evidence packet says so."""


@runtime_checkable
class TrustMaterial(Protocol):
    """What a verifier plugin may say about the trust material it reads, so that the core carries
    exactly those files to where it verifies (audit worker processes, evidence packets) without knowing
    what they mean. Without it, the core carries every file under `trust/`."""

    def trust_files(self, files: FileSource) -> Sequence[TrustFile]:
        """The files `open_verifier(files)` would read, in order (empty: `files` configures none)."""
        ...


# --- deployment agents ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentTarget:
    """One target of an environment (`targets:` in the ratified environment), as its agent sees it."""

    environment: str
    name: str
    endpoint: str
    """Where the engine listens, as the environment says (`unix:///var/run/docker.sock`, `tcp://…`)."""
    project: str
    """The Compose project the target's containers belong to."""


@dataclass(frozen=True)
class DeployStep:
    """One step of a deployment as its record keeps it: what ran, how it ended, its output's tail."""

    stage: str
    """`pull`, `up`, `inspect`, …"""
    command: str
    """What ran, as a person would type it (never a secret value)."""
    exit_code: int
    output: str
    """The tail of what it printed (the core redacts secret values before recording it)."""
    started_at: datetime
    completed_at: datetime

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class RunningContainer:
    """A container of a target's Compose project, as the engine reports it."""

    service: str
    container: str
    """The container id."""
    image: str
    """The image reference the container was created from (`repo@sha256:…` for a Stella lock)."""
    digest: str | None
    """The manifest digest it runs (from the image's repository digests), None when unknown."""
    state: str
    """`running`, `exited`, `created`, …"""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    """The container's labels that Stella set (those starting with `io.stella.`, such as `CONFIG_LABEL`
    and `CONFIG_FILES_LABEL`); other labels may be left out."""


CONFIG_LABEL = "io.stella.config-hash"
"""The label Stella sets on each service's containers: `sha256:<hex>` over the files the service mounts
from the agent's state directory, as they were when the container was created (`reconciler.drift`)."""
CONFIG_FILES_LABEL = "io.stella.config-files"
"""The label beside `CONFIG_LABEL`: a JSON list of the absolute host paths its hash covers."""


@runtime_checkable
class Engine(Protocol):
    """A container engine a deployment agent drives (DESIGN §9). Methods report failures in the
    `DeployStep` they return (`exit_code != 0`, the reason in `output`); they raise only `StellaError`s
    for an engine that cannot be reached at all."""

    def pull(self, image: str) -> DeployStep:
        """Pull `image` (`repo@sha256:<hex>`) by digest, and check that the engine then holds exactly
        that digest for it; a failure names the digest."""
        ...

    def up(
        self,
        project: str,
        lock: Path,
        environ: Mapping[str, str],
        timeout: float,
        labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> DeployStep:
        """Bring `project` to exactly the services of the compose file `lock`, waiting at most `timeout`
        seconds for them to be running and healthy, without pulling (`up -d --wait --remove-orphans
        --pull never`). `environ` holds the values the lock interpolates (secrets): the process's
        environment only, never written anywhere. `labels` adds labels to the containers of each
        service named (service -> {label: value}), on top of the lock's own (the lock is not changed)."""
        ...

    def running(self, project: str) -> list[RunningContainer]:
        """Every container of `project`, in one engine call where the engine allows it, with the labels
        Stella set on it (`RunningContainer.labels`)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class AgentPlugin(Protocol):
    """Entry point object of group `stella.agents`: opens the engine of one target."""

    manifest: PluginManifest

    def open(self, target: AgentTarget, environ: Mapping[str, str]) -> Engine:
        """The engine at `target.endpoint`; `environ` is the agent's process environment."""
        ...


@runtime_checkable
class AgentDiagnosis(Protocol):
    """What an agent plugin may offer `stella doctor`: whether this machine has what it needs to drive
    a target (for the Docker agent: a Compose v2). Checks only; it changes nothing."""

    def diagnose(self, target: AgentTarget, environ: Mapping[str, str]) -> Sequence[DoctorCheck]: ...


# --- doctor checks -------------------------------------------------------------------------------

DoctorStatus = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class DoctorCheck:
    """One check a doctor plugin reports; `stella doctor` shows it as `PLUGIN/NAME`."""

    name: str
    status: DoctorStatus
    message: str
    details: tuple[str, ...] = ()


@runtime_checkable
class DoctorPlugin(Protocol):
    """Entry point object of group `stella.doctor`: extra checks of a repository.

    `check` returns a list of `DoctorCheck`s, or of objects or dicts with `name`, `status` (ok, warn or
    fail), `message` and optionally `details` (a list of strings). It runs with a time limit; one that
    raises, hangs or returns anything else is a `fail` named after the plugin.
    """

    manifest: PluginManifest

    def check(self, repo_path: Path) -> Sequence[object]:
        """The checks of the repository at `repo_path` (read it; never write)."""
        ...


WITNESS_SUFFIX = ".keyless.sigstore.json"
"""`evidence/<hex>.keyless.sigstore.json`: a keyless bundle over a record first signed with a key."""
