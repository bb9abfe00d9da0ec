"""Stella: a GitOps release orchestrator with signed, replayable evidence in Git.

The public API for plugin authors and embedders: the plugin interfaces and value types, and the error
hierarchy. Everything else is reached through the `stella` command.

The names are those of `reconciler.api`, loaded on first use (PEP 562): importing a submodule, such
as the command line's, does not load the models and protocols behind them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .api import (
        PLUGIN_API_VERSION,
        Actor,
        ApprovalRecord,
        FileSource,
        Gate,
        GateContext,
        GateResult,
        ImageRef,
        InvalidInput,
        PluginError,
        PluginManifest,
        PriorDecision,
        Problem,
        Registry,
        RegistryOptions,
        RegistryPlugin,
        RegistryUnavailable,
        Signer,
        SignerPlugin,
        StellaError,
        Transient,
        ValidationFailed,
        Waiting,
    )

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


def __getattr__(name: str) -> Any:
    """A public name, from `reconciler.api` on first use (then cached in this module)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import api

    value = getattr(api, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
