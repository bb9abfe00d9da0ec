"""The plugin interfaces of Stella, and the API version they are checked against.

A plugin is an object found through an entry point (`stella.registries`, `stella.gates`, `stella.signers`,
`stella.agents`, `stella.doctor`). It carries a `manifest` and satisfies the Protocol of its kind; the
loader (`discover.py`) checks both. Plugins take and return value objects; they never print or exit.
This module holds only interfaces and value types: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

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
    """Resolves image references to manifest digests. Must be safe to call from several threads."""

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


WITNESS_SUFFIX = ".keyless.sigstore.json"
"""`evidence/<hex>.keyless.sigstore.json`: a keyless bundle over a record first signed with a key."""
