"""The `plugins` check: every installed entry point of every kind, with its manifest and health.

Plugins are loaded and checked exactly as `discover()` does (`discover.check`), so that what the doctor
shows is what the core would use; a plugin that fails to import is `failed`, one that fails a check is
`refused` (with the reason). `PluginInfo` rows are also what `stella doctor -o json` lists.

Must not: keep any plugin registry of its own beyond the returned rows, or let a broken plugin raise
out of the doctor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

from ..discover import GROUPS, KIND_NOUNS, check
from ..protocols import DoctorPlugin, PluginManifest
from .result import Check, Status, error_text

Health = Literal["loaded", "refused", "failed"]


KINDS: dict[str, tuple[str, type]] = {**GROUPS, "doctor": ("stella.doctor", DoctorPlugin)}
"""Every plugin kind: its entry point group and the Protocol its objects must satisfy."""
NOUNS = {**KIND_NOUNS, "doctor": "doctor"}


@dataclass(frozen=True)
class PluginInfo:
    """One installed entry point: what it points at, what it says about itself, and its health."""

    kind: str
    name: str
    target: str
    distribution: str | None
    distribution_version: str | None
    health: Health
    reason: str = ""
    manifest: PluginManifest | None = None
    offline_only: bool = False
    """Refused only because it needs the network and offline mode is on."""
    obj: object = field(default=None, repr=False, compare=False)

    @property
    def group(self) -> str:
        return KINDS[self.kind][0]

    def as_dict(self) -> dict[str, object]:
        manifest = self.manifest
        return {
            "kind": self.kind,
            "group": self.group,
            "name": self.name,
            "target": self.target,
            "distribution": (
                {"name": self.distribution, "version": self.distribution_version}
                if self.distribution
                else None
            ),
            "health": self.health,
            "reason": self.reason,
            "manifest": (
                {
                    "name": manifest.name,
                    "version": manifest.version,
                    "kinds": list(manifest.kinds),
                    "network": manifest.network,
                    "apiVersion": manifest.api_version,
                    "description": manifest.description,
                }
                if manifest
                else None
            ),
        }


def scan_plugins(*, offline: bool) -> list[PluginInfo]:
    """Every installed entry point of every kind, loaded and checked as `discover()` does."""
    found: list[PluginInfo] = []
    for kind, (group, protocol) in KINDS.items():
        for ep in sorted(entry_points(group=group), key=lambda e: (e.name, e.value)):
            found.append(_inspect(kind, ep, protocol, offline=offline))
    return found


def _inspect(kind: str, ep: EntryPoint, protocol: type, *, offline: bool) -> PluginInfo:
    dist = ep.dist
    base: dict[str, Any] = {
        "kind": kind,
        "name": ep.name,
        "target": ep.value,
        "distribution": dist.name if dist is not None else None,
        "distribution_version": dist.version if dist is not None else None,
    }
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin must not crash the doctor either
        return PluginInfo(**base, health="failed", reason=f"failed to import {ep.value}: {error_text(exc)}")
    raw = getattr(obj, "manifest", None)
    manifest = raw if isinstance(raw, PluginManifest) else None
    reason = check(obj, protocol, offline=offline)
    if reason is None:
        return PluginInfo(**base, health="loaded", manifest=manifest, obj=obj)
    offline_only = offline and check(obj, protocol, offline=False) is None
    return PluginInfo(**base, health="refused", reason=reason, manifest=manifest, offline_only=offline_only)


def label(info: PluginInfo) -> str:
    return f"{NOUNS[info.kind]} plugin {info.name!r} ({info.target})"


def plugins_check(plugins: Sequence[PluginInfo]) -> Check:
    loaded = [p for p in plugins if p.health == "loaded"]
    offline_refused = [p for p in plugins if p.offline_only]
    broken = [p for p in plugins if p.health != "loaded" and not p.offline_only]
    details = [f"{label(p)}: {p.reason}" for p in broken]
    seen: dict[tuple[str, str], list[PluginInfo]] = {}
    for p in plugins:
        seen.setdefault((p.kind, p.name), []).append(p)
    for (kind, name), same in sorted(seen.items()):
        if len(same) > 1:
            providers = ", ".join(f"{p.target} ({p.distribution or 'unknown distribution'})" for p in same)
            details.append(f"{NOUNS[kind]} plugin {name!r} is installed {len(same)} times: {providers}")
    parts = [f"{len(plugins)} installed", f"{len(loaded)} loaded"]
    if offline_refused:
        names = ", ".join(p.name for p in offline_refused)
        parts.append(f"{len(offline_refused)} refused in offline mode ({names})")
    if broken:
        parts.append(f"{len(broken)} broken ({', '.join(p.name for p in broken)})")
    status: Status = "warn" if details else "ok"
    return Check("plugins", status, "; ".join(parts), tuple(details))


def manifest_of(plugins: Sequence[PluginInfo], kind: str, name: str) -> PluginManifest | None:
    for p in plugins:
        if p.kind == kind and p.name == name and p.manifest is not None:
            return p.manifest
    return None


def usable(plugins: Sequence[PluginInfo], kind: str, name: str) -> PluginInfo | None:
    """The entry point the core would use for (kind, name): a loaded one, else the last refused one."""
    same = [p for p in plugins if p.kind == kind and p.name == name]
    loaded = [p for p in same if p.health == "loaded"]
    chosen = loaded or same
    return chosen[-1] if chosen else None
