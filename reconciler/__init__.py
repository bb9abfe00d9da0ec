"""Stella: a GitOps release orchestrator with signed, replayable evidence in Git.

The public API for plugin authors and embedders: the plugin interfaces and value types, and the error
hierarchy. Everything else is reached through the `stella` command.
"""

__version__ = "0.1.0"

from .errors import (
    InvalidInput,
    PluginError,
    Problem,
    RegistryUnavailable,
    StellaError,
    Transient,
    ValidationFailed,
    Waiting,
)
from .protocols import (
    PLUGIN_API_VERSION,
    Actor,
    ApprovalRecord,
    FileSource,
    Gate,
    GateContext,
    GateResult,
    PluginManifest,
    PriorDecision,
    Registry,
    RegistryOptions,
    RegistryPlugin,
    Signer,
    SignerPlugin,
)
from .reference import ImageRef

__all__ = [
    "PLUGIN_API_VERSION",
    "Actor",
    "ApprovalRecord",
    "FileSource",
    "Gate",
    "GateContext",
    "GateResult",
    "ImageRef",
    "InvalidInput",
    "PluginError",
    "PluginManifest",
    "PriorDecision",
    "Problem",
    "Registry",
    "RegistryOptions",
    "RegistryPlugin",
    "RegistryUnavailable",
    "Signer",
    "SignerPlugin",
    "StellaError",
    "Transient",
    "ValidationFailed",
    "Waiting",
    "__version__",
]
