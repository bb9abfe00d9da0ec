"""The `plugins-in-use` and `offline` checks: the plugins the repository asks for, and whether they work.

The gates of every environment, the registry plugin of every registry (configured, or the default one
for hosts that releases name), and the signer of `stella.yaml`, each named with the file that uses it;
in offline mode, which of them need the network (a gate or signer cannot work then; a registry is
served from the offline mirror instead, as the resolver does).

Must not: load plugins itself (it reads the rows `plugins.scan_plugins()` made) or reach the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..discover import GROUPS, Plugins
from ..models import Repository, Settings
from ..policy import CORE_GATES
from ..resolve import OFFLINE_PLUGIN
from .plugins import NOUNS, PluginInfo, manifest_of, usable
from .result import Check


@dataclass(frozen=True)
class Use:
    """One plugin the repository uses: kind, name, the file that asks for it, and what for."""

    kind: str
    name: str
    where: str
    purpose: str
    environment: str | None = None


def uses(
    settings: Settings, repository: Repository | None, *, offline: bool, plugins: Sequence[PluginInfo]
) -> list[Use]:
    found = [Use("gates", name, "(core)", "every environment") for name in CORE_GATES]
    if repository is not None:
        for env_name, environment in sorted(repository.environments.items()):
            for gate in environment.gates:
                where = f"environments/{env_name}.yaml"
                found.append(Use("gates", gate.plugin, where, f"environment {env_name}", env_name))
    for entry in settings.registries:
        name = entry.plugin
        if offline and name != OFFLINE_PLUGIN:
            manifest = manifest_of(plugins, "registries", name)
            if manifest is None or manifest.network:
                name = OFFLINE_PLUGIN  # what the resolver does: offline, hosts come from the mirror
        found.append(Use("registries", name, "stella.yaml", f"registry {entry.host}"))
    if offline:
        found.append(Use("registries", OFFLINE_PLUGIN, "stella.yaml", "images from the offline mirror"))
    elif repository is not None:
        configured = {entry.host for entry in settings.registries}
        for rel_name, release in sorted(repository.releases.items()):
            hosts = {c.ref.registry for c in release.components.values() if c.pinned_digest is None}
            for host in sorted(hosts - configured):
                found.append(Use("registries", "oci", f"releases/{rel_name}.yaml", f"registry {host}"))
    found.append(Use("signers", settings.signer.plugin, "stella.yaml", "evidence signing"))
    unique: dict[tuple[str, str, str], Use] = {}
    for use in found:
        unique.setdefault((use.kind, use.name, use.where), use)
    return list(unique.values())


def in_use_check(uses: Sequence[Use], plugins: Sequence[PluginInfo], manifests_valid: bool) -> Check:
    broken = {(p.kind, p.name): p.reason for p in plugins if p.health != "loaded"}
    core_view = Plugins(broken={k: v for k, v in broken.items() if k[0] in GROUPS})
    problems = []
    for use in uses:
        info = usable(plugins, use.kind, use.name)
        if info is not None and (info.health == "loaded" or info.offline_only):
            continue  # offline refusals are the `offline` check's business
        problems.append(f"{use.where}: {core_view.unavailable(use.kind, use.name)} ({use.purpose})")
    total = len({(u.kind, u.name) for u in uses})
    note = "" if manifests_valid else " (environment gates not checked: the manifests do not validate)"
    if not problems:
        return Check(
            "plugins-in-use", "warn" if note else "ok", f"{total} plugin(s) in use, all installed{note}"
        )
    message = f"{len(problems)} plugin use(s) cannot work, first: {problems[0]}{note}"
    return Check("plugins-in-use", "fail", message, tuple(problems))


def offline_check(
    uses: Sequence[Use], plugins: Sequence[PluginInfo], offline_why: str, settings: Settings
) -> Check:
    networked = []
    for use in uses:
        info = usable(plugins, use.kind, use.name)
        if info is not None and info.manifest is not None and info.manifest.network:
            networked.append(use)
    if not offline_why:
        if not networked:
            return Check("offline", "ok", "offline mode is off; no plugin in use needs the network")
        names = sorted({f"{NOUNS[u.kind]} {u.name}" for u in networked})
        return Check("offline", "ok", f"offline mode is off; network plugins in use: {', '.join(names)}")
    problems = []
    notes = []
    for use in networked:
        refusal = (
            f"{NOUNS[use.kind]} plugin {use.name!r} needs the network and offline mode is on ({offline_why})"
        )
        if use.kind == "gates":
            problems.append(f"{use.where}: {refusal}: promotions to {use.environment} stay pending")
        elif use.kind == "signers":
            problems.append(f"{use.where}: {refusal}: no decision can be recorded")
        else:
            notes.append(
                f"{use.where}: {refusal}: {use.purpose} is served from {settings.mirror}/oci/ instead"
            )
    if problems:
        message = f"{len(problems)} plugin use(s) refused in offline mode, first: {problems[0]}"
        return Check("offline", "fail", message, tuple(problems + notes))
    return Check(
        "offline",
        "ok",
        f"offline mode is on ({offline_why}); no plugin in use needs the network",
        tuple(notes),
    )
