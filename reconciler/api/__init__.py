"""The public API for plugin authors: the one module a plugin imports from Stella.

Everything a gate, registry, signer, verifier, agent or doctor check needs is here: the plugin
Protocols (and the optional capabilities a plugin may add to its kind) with the value types they
exchange, the error hierarchy, image references, the release-lock models a gate reads, the bundle
helpers a verifier uses, and the one time format of evidence. `reconciler.api.testing` holds fakes
of these interfaces for plugins' tests.

Every other module of the `reconciler` package is private: it may change in any release, and a plugin
that imports one is refused by the project's import contracts (`lint-imports`).

`API_VERSION` is the version of this module's contract. A plugin states the version it targets in its
`PluginManifest.api_version`; Stella loads a plugin only when it equals `API_VERSION`. A change that
removes or changes a name here bumps it; adding a name (or an optional field with a default, like
`GateContext.registries`) does not.
"""

from __future__ import annotations

from ..errors import (
    InvalidInput,
    PluginError,
    Problem,
    RegistryUnavailable,
    StellaError,
    Transient,
    ValidationFailed,
    Waiting,
)
from ..models import Environment, LockedComponent, Promotion, ReleaseLock, RepoPath
from ..protocols import (
    CONFIG_FILES_LABEL,
    CONFIG_LABEL,
    IN_TOTO_PAYLOAD_TYPE,
    PLUGIN_API_VERSION,
    Actor,
    AgentDiagnosis,
    AgentPlugin,
    AgentTarget,
    ApprovalRecord,
    BundleVerifier,
    DeployStep,
    Descriptor,
    DoctorCheck,
    DoctorPlugin,
    DoctorStatus,
    Engine,
    FileSource,
    Gate,
    GateContext,
    GateResult,
    GateStatus,
    PluginManifest,
    PriorDecision,
    Registry,
    RegistryAttachments,
    RegistryOptions,
    RegistryPing,
    RegistryPlugin,
    RegistryProbe,
    RunningContainer,
    Signer,
    SignerPlugin,
    TrustFile,
    TrustMaterial,
    VerifierPlugin,
)
from ..reference import DIGEST_RE, ImageRef, ReferenceError, parse
from ..sign import (
    ACCEPTED_BUNDLE_MEDIA_TYPES,
    BUNDLE_MEDIA_TYPE,
    BundleError,
    TrustedKey,
    TrustedKeys,
    verify_bundle,
)
from ..timefmt import as_utc, rfc3339

API_VERSION = PLUGIN_API_VERSION

__all__ = [
    "ACCEPTED_BUNDLE_MEDIA_TYPES",
    "API_VERSION",
    "BUNDLE_MEDIA_TYPE",
    "CONFIG_FILES_LABEL",
    "CONFIG_LABEL",
    "DIGEST_RE",
    "IN_TOTO_PAYLOAD_TYPE",
    "PLUGIN_API_VERSION",
    "Actor",
    "AgentDiagnosis",
    "AgentPlugin",
    "AgentTarget",
    "ApprovalRecord",
    "BundleError",
    "BundleVerifier",
    "DeployStep",
    "Descriptor",
    "DoctorCheck",
    "DoctorPlugin",
    "DoctorStatus",
    "Engine",
    "Environment",
    "FileSource",
    "Gate",
    "GateContext",
    "GateResult",
    "GateStatus",
    "ImageRef",
    "InvalidInput",
    "LockedComponent",
    "PluginError",
    "PluginManifest",
    "PriorDecision",
    "Problem",
    "Promotion",
    "ReferenceError",
    "Registry",
    "RegistryAttachments",
    "RegistryOptions",
    "RegistryPing",
    "RegistryPlugin",
    "RegistryProbe",
    "RegistryUnavailable",
    "ReleaseLock",
    "RepoPath",
    "RunningContainer",
    "Signer",
    "SignerPlugin",
    "StellaError",
    "Transient",
    "TrustFile",
    "TrustMaterial",
    "TrustedKey",
    "TrustedKeys",
    "ValidationFailed",
    "VerifierPlugin",
    "Waiting",
    "as_utc",
    "parse",
    "rfc3339",
    "verify_bundle",
]
