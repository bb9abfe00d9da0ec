"""Find plugins through entry points and check them before the core uses them.

Each entry point of a Stella group must load to an object with a `manifest` (`PluginManifest`) whose
`api_version` equals `PLUGIN_API_VERSION`, and that satisfies the Protocol of its kind. Offline mode
refuses plugins that declare `network: True`. A plugin that fails any check is not used; the reason is
kept in `Plugins.broken` so that only what needs it is affected, and `stella doctor` can show it.
There is no global state: `discover()` returns a `Plugins` value that callers pass on. An optional
capability of a kind is a Protocol of its own, checked where it is used (`Plugins.verifiers()`: the
signers that are also a `VerifierPlugin`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import PluginError
from .protocols import (
    PLUGIN_API_VERSION,
    AgentPlugin,
    Gate,
    PluginManifest,
    RegistryPlugin,
    SignerPlugin,
    VerifierPlugin,
)

log = logging.getLogger(__name__)

KIND_NOUNS = {"registries": "registry", "gates": "gate", "signers": "signer", "agents": "agent"}
GROUPS: dict[str, tuple[str, type]] = {
    "registries": ("stella.registries", RegistryPlugin),
    "gates": ("stella.gates", Gate),
    "signers": ("stella.signers", SignerPlugin),
    "agents": ("stella.agents", AgentPlugin),
}
DECIDING = ("registries", "gates", "signers")
"""What a pass, `plan` or an audit loads by default; deployment agents only `stella agent` (and doctor)."""


@dataclass(frozen=True)
class Plugins:
    """The plugins usable in this run, by kind and name, and those refused with the reason."""

    registries: dict[str, RegistryPlugin] = field(default_factory=dict)
    gates: dict[str, Gate] = field(default_factory=dict)
    signers: dict[str, SignerPlugin] = field(default_factory=dict)
    agents: dict[str, AgentPlugin] = field(default_factory=dict)
    broken: dict[tuple[str, str], str] = field(default_factory=dict)
    offline: bool = False

    def unavailable(self, kind: str, name: str) -> str:
        """Why plugin `name` of `kind` cannot be used (it is not installed, or it was refused)."""
        reason = self.broken.get((kind, name))
        if reason:
            return f"{KIND_NOUNS[kind]} plugin {name!r} is not usable: {reason}"
        return f"{KIND_NOUNS[kind]} plugin {name!r} is not installed (no {GROUPS[kind][0]} entry point)"

    def agent(self, name: str) -> AgentPlugin:
        if name in self.agents:
            return self.agents[name]
        raise PluginError(self.unavailable("agents", name))

    def signer(self, name: str) -> SignerPlugin:
        if name in self.signers:
            return self.signers[name]
        raise PluginError(self.unavailable("signers", name))

    def registry(self, name: str) -> RegistryPlugin:
        if name in self.registries:
            return self.registries[name]
        raise PluginError(self.unavailable("registries", name))

    def verifiers(self) -> dict[str, VerifierPlugin]:
        """The usable signer plugins that also verify their bundles offline, in name order."""
        return {
            name: plugin
            for name, plugin in sorted(self.signers.items())
            if isinstance(plugin, VerifierPlugin)
        }


def check(obj: Any, protocol: type, *, offline: bool) -> str | None:
    """Why `obj` cannot be used as a plugin of `protocol`, or None when it can."""
    manifest = getattr(obj, "manifest", None)
    if not isinstance(manifest, PluginManifest):
        return "has no PluginManifest `manifest` attribute"
    if manifest.api_version != PLUGIN_API_VERSION:
        return (
            f"targets plugin API version {manifest.api_version}, "
            f"this Stella provides version {PLUGIN_API_VERSION}"
        )
    if not isinstance(obj, protocol):
        return f"does not implement the {protocol.__name__} interface"
    if offline and manifest.network:
        return (
            f"plugin {manifest.name!r} needs the network and offline mode is on "
            "(`offline: true` in stella.yaml, or --offline)"
        )
    return None


IMPORT_TIMEOUT = 10.0
"""How long importing one plugin may take before it is refused (an import that hangs is abandoned)."""


def _load(ep: EntryPoint) -> tuple[Any, str | None]:
    """Import a plugin on a thread of its own: one that raises, calls `sys.exit` or hangs at import is
    refused with the reason, and the core goes on."""
    outcome: list[tuple[Any, str | None]] = []

    def load() -> None:
        try:
            outcome.append((ep.load(), None))
        except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not stop the core
            outcome.append((None, f"failed to import {ep.value}: {type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=load, name=f"stella-import-{ep.name}", daemon=True)
    thread.start()
    thread.join(IMPORT_TIMEOUT)
    if not outcome:
        return None, f"importing {ep.value} did not finish within {IMPORT_TIMEOUT:g}s"
    return outcome[0]


def discover(*, offline: bool = False, kinds: tuple[str, ...] = DECIDING) -> Plugins:
    """Load every installed plugin of `kinds` through its entry point group."""
    found: dict[str, dict[str, Any]] = {kind: {} for kind in GROUPS}
    broken: dict[tuple[str, str], str] = {}
    for kind in kinds:
        group, protocol = GROUPS[kind]
        for ep in sorted(entry_points(group=group), key=lambda e: e.name):
            obj, error = _load(ep)
            error = error or check(obj, protocol, offline=offline)
            if error:
                expected = offline and obj is not None and check(obj, protocol, offline=False) is None
                log.log(
                    logging.INFO if expected else logging.WARNING,
                    "%s plugin %s refused: %s",
                    kind,
                    ep.name,
                    error,
                )
                broken[(kind, ep.name)] = error
            else:
                found[kind][ep.name] = obj
    return Plugins(
        registries=found["registries"],
        gates=found["gates"],
        signers=found["signers"],
        agents=found["agents"],
        broken=broken,
        offline=offline,
    )
