"""`stella doctor`: is this repository, and this installation, ready to reconcile?

Each check is a `Check` (name, status `ok` | `warn` | `fail`, message, details), in this order:

- `repository`: the Git repository opens, `stella.yaml` at HEAD reads, and the branch it names exists.
- `manifests`: every manifest on that branch validates (problems counted, the first few named file:line).
- `plugins`: every installed entry point of every kind (registries, gates, signers, agents, doctor
  checks) with its manifest and health: loaded, refused (with the reason) or
  failed to import. It loads them exactly as `discover()` does, with the same checks (`discover.check`).
- `plugins-in-use`: the gates of every environment, the registry plugins and the signer of
  `stella.yaml` are installed and usable; each one that is not is named with the file that uses it.
- `offline`: offline mode (`offline: true` in stella.yaml, or `--offline`) against the network plugins
  in use: a gate or signer that needs the network cannot work offline.
- `registries`: each configured registry host answers `GET /v2/` (a short timeout; skipped offline).
- `signing-key`: the evidence signing key (`STELLA_SIGNING_KEY`) is set, readable, not readable by
  group or others, P-256, and its public key is in `trust/evidence-keys/` (else records would not
  verify).
- `allowed-signers`: every line of `trust/allowed_signers` has an identity and a key ssh-keygen accepts.
- `git-access`: the Git directory's objects and refs are writable (evidence commits go there).
- `clock`: the system clock is not before the newest evidence decision.
- `evidence`: the evidence ref exists, and the chain head each environment pointer names is present
  (cheap: `stella audit verify` is the full audit).
- third-party checks from the `stella.doctor` entry point group, each isolated: a check that raises,
  hangs or returns nonsense is a `fail`, never a crash.

What it must not do: write anything (not the repository, not the evidence index cache; ssh-keygen gets
a temporary directory of its own), or print (`cli.py` shows the result). Its only network access is
the registry probe, never in offline mode.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import httpx

from .discover import GROUPS, KIND_NOUNS, Plugins, check
from .errors import InvalidInput, StellaError, ValidationFailed
from .evidence import bundle_path, evidence_path, pointer_path
from .loop import ALLOWED_SIGNERS, source_commit
from .manifests import load_repository, load_settings
from .models import Repository, Settings
from .policy import CORE_GATES
from .protocols import PluginManifest
from .reference import ReferenceError, parse
from .repo import GitTree, Repo
from .resolve import OFFLINE_PLUGIN
from .sign import key_hint, load_private_key, load_public_key, resolve_key_path

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail"]
Health = Literal["loaded", "refused", "failed"]

KEYS_DIR = "trust/evidence-keys"
PROBE_TIMEOUT = 3.0
"""Seconds the registry probe may take."""
CHECK_TIMEOUT = 30.0
"""Seconds one third-party doctor check may take."""
SHOWN = 5
"""How many problems a check names before it only counts the rest."""


@dataclass(frozen=True)
class Check:
    """The outcome of one check."""

    name: str
    status: Status
    message: str
    details: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "details": list(self.details),
        }


@runtime_checkable
class DoctorPlugin(Protocol):
    """Entry point object of group `stella.doctor`: extra checks of a repository.

    `check` returns a list of `Check`s, or of objects or dicts with `name`, `status` (ok, warn or
    fail), `message` and optionally `details` (a list of strings).
    """

    manifest: PluginManifest

    def check(self, repo_path: Path) -> Sequence[object]: ...


@runtime_checkable
class _Manifested(Protocol):
    """What is checked of an agent plugin here: it carries a manifest (its Protocol is the agent's)."""

    manifest: PluginManifest


KINDS: dict[str, tuple[str, type]] = {
    **GROUPS,
    "agents": ("stella.agents", _Manifested),
    "doctor": ("stella.doctor", DoctorPlugin),
}
"""Every plugin kind: its entry point group and the Protocol its objects must satisfy."""
_NOUNS = {**KIND_NOUNS, "agents": "agent", "doctor": "doctor"}


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


@dataclass(frozen=True)
class Diagnosis:
    """Every check, and every installed plugin."""

    checks: list[Check]
    plugins: list[PluginInfo]

    @property
    def usable(self) -> bool:
        """False when the repository itself cannot be read (the `repository` check failed)."""
        return all(c.status != "fail" for c in self.checks if c.name == "repository")

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]


def run_checks(
    repo_path: str | os.PathLike[str],
    *,
    offline: bool,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> list[Check]:
    """Every check of `repo_path` (see the module docstring)."""
    return diagnose(repo_path, offline=offline, environ=environ, now=now).checks


def diagnose(
    repo_path: str | os.PathLike[str],
    *,
    offline: bool,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Diagnosis:
    """Every check of `repo_path`, and the plugin table. `offline` is the `--offline` flag; the
    repository's `offline:` setting is read here. Never raises for what it checks."""
    environ = os.environ if environ is None else environ
    moment = now or datetime.now(UTC)
    path = Path(repo_path)
    checks: list[Check] = []
    state = _open(path)
    checks.append(state.check)
    if state.repository_check is not None:
        checks.append(state.repository_check)
    settings, tree, repo = state.settings, state.tree, state.repo
    offline_why = _offline_reason(flag=offline, setting=bool(settings and settings.offline))
    plugins = scan_plugins(offline=bool(offline_why))
    checks.append(_plugins_check(plugins))
    if settings is not None and tree is not None:
        uses = _uses(settings, state.repository, offline=bool(offline_why), plugins=plugins)
        checks.append(_in_use_check(uses, plugins, state.repository is not None))
        checks.append(_offline_check(uses, plugins, offline_why, settings))
        checks.append(_safely("registries", lambda: _registries_check(settings, tree, offline_why, plugins)))
    governed = _ratified_view(repo, settings, tree) if repo is not None and tree is not None else None
    if governed is not None and tree is not None and settings is not None:
        checks.append(_safely("policy", lambda: _policy_check(governed, tree, settings)))
    trusted_tree = governed or tree
    checks.append(_safely("signing-key", lambda: _signing_key_check(settings, trusted_tree, environ)))
    if tree is not None:
        checks.append(_safely("allowed-signers", lambda: _allowed_signers_check(tree, state.repository)))
    if repo is not None:
        checks.append(_safely("git-access", lambda: _git_access_check(repo, settings)))
    if repo is not None and settings is not None and tree is not None:
        from .loop import evidence_ref

        ref = evidence_ref(repo, settings)
        try:
            evidence = _read_evidence(repo, ref)
        except Exception as exc:  # an odd evidence branch must not hide the other checks
            evidence = _Evidence(None, [f"cannot read {ref}: {_exc(exc)}"])
        checks.append(_clock_check(evidence, moment))
        checks.append(_evidence_check(evidence, ref))
    checks.extend(_third_party_checks(plugins, path))
    return Diagnosis(checks, plugins)


def _safely(name: str, make: Callable[[], Check]) -> Check:
    """`make()`, or a `fail` saying the check itself broke: one check never hides the others."""
    try:
        return make()
    except Exception as exc:
        log.debug("check %s failed", name, exc_info=True)
        return Check(name, "fail", f"the check itself failed: {_exc(exc)}")


# --- repository and manifests --------------------------------------------------------------------


@dataclass
class _State:
    check: Check
    repo: Repo | None = None
    settings: Settings | None = None
    commit: str | None = None
    tree: GitTree | None = None
    repository: Repository | None = None
    repository_check: Check | None = None


def _open(path: Path) -> _State:
    try:
        repo = Repo(path)
    except StellaError as exc:
        return _State(Check("repository", "fail", str(exc)))
    try:
        branch, commit = source_commit(repo)
        tree = repo.tree(commit)
        settings = load_settings(tree)
    except ValidationFailed as exc:
        problems = exc.problems
        return _State(
            Check("repository", "fail", f"stella.yaml cannot be read: {problems[0]}", _named(problems)), repo
        )
    except StellaError as exc:
        return _State(Check("repository", "fail", str(exc)), repo)
    where = repo.workdir or repo.path
    state = _State(
        Check("repository", "ok", f"{where}: branch {branch} at {commit[:12]}"), repo, settings, commit, tree
    )
    try:
        repository = load_repository(tree)
    except ValidationFailed as exc:
        problems = exc.problems
        message = f"{len(problems)} problem(s) on branch {branch}, first: {problems[0]}"
        state.repository_check = Check("manifests", "fail", message, _named(problems))
        return state
    state.repository = repository
    counts = {
        "environments": len(repository.environments),
        "releases": len(repository.releases),
        "promotions": len(repository.promotions),
        "approvals": sum(len(a) for a in repository.approvals.values()),
    }
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    state.repository_check = Check("manifests", "ok", f"all valid: {summary}")
    return state


def _named(problems: Sequence[object], shown: int = SHOWN) -> tuple[str, ...]:
    lines = [str(p) for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"... and {len(problems) - shown} more (`stella validate` lists them all)")
    return tuple(lines)


def _offline_reason(*, flag: bool, setting: bool) -> str:
    """Which setting turns offline mode on, as a message names it ('' when it is off)."""
    reasons = (["`offline: true` in stella.yaml"] if setting else []) + (["--offline"] if flag else [])
    return " and ".join(reasons)


# --- plugins -------------------------------------------------------------------------------------


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
        return PluginInfo(**base, health="failed", reason=f"failed to import {ep.value}: {_exc(exc)}")
    raw = getattr(obj, "manifest", None)
    manifest = raw if isinstance(raw, PluginManifest) else None
    reason = check(obj, protocol, offline=offline)
    if reason is None:
        return PluginInfo(**base, health="loaded", manifest=manifest, obj=obj)
    offline_only = offline and check(obj, protocol, offline=False) is None
    return PluginInfo(**base, health="refused", reason=reason, manifest=manifest, offline_only=offline_only)


def _exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _label(info: PluginInfo) -> str:
    return f"{_NOUNS[info.kind]} plugin {info.name!r} ({info.target})"


def _plugins_check(plugins: Sequence[PluginInfo]) -> Check:
    loaded = [p for p in plugins if p.health == "loaded"]
    offline_refused = [p for p in plugins if p.offline_only]
    broken = [p for p in plugins if p.health != "loaded" and not p.offline_only]
    details = [f"{_label(p)}: {p.reason}" for p in broken]
    seen: dict[tuple[str, str], list[PluginInfo]] = {}
    for p in plugins:
        seen.setdefault((p.kind, p.name), []).append(p)
    for (kind, name), same in sorted(seen.items()):
        if len(same) > 1:
            providers = ", ".join(f"{p.target} ({p.distribution or 'unknown distribution'})" for p in same)
            details.append(f"{_NOUNS[kind]} plugin {name!r} is installed {len(same)} times: {providers}")
    parts = [f"{len(plugins)} installed", f"{len(loaded)} loaded"]
    if offline_refused:
        names = ", ".join(p.name for p in offline_refused)
        parts.append(f"{len(offline_refused)} refused in offline mode ({names})")
    if broken:
        parts.append(f"{len(broken)} broken ({', '.join(p.name for p in broken)})")
    status: Status = "warn" if details else "ok"
    return Check("plugins", status, "; ".join(parts), tuple(details))


@dataclass(frozen=True)
class _Use:
    """One plugin the repository uses: kind, name, the file that asks for it, and what for."""

    kind: str
    name: str
    where: str
    purpose: str
    environment: str | None = None


def _uses(
    settings: Settings, repository: Repository | None, *, offline: bool, plugins: Sequence[PluginInfo]
) -> list[_Use]:
    uses = [_Use("gates", name, "(core)", "every environment") for name in CORE_GATES]
    if repository is not None:
        for env_name, environment in sorted(repository.environments.items()):
            for gate in environment.gates:
                where = f"environments/{env_name}.yaml"
                uses.append(_Use("gates", gate.plugin, where, f"environment {env_name}", env_name))
    for entry in settings.registries:
        name = entry.plugin
        if offline and name != OFFLINE_PLUGIN:
            manifest = _manifest_of(plugins, "registries", name)
            if manifest is None or manifest.network:
                name = OFFLINE_PLUGIN  # what the resolver does: offline, hosts come from the mirror
        uses.append(_Use("registries", name, "stella.yaml", f"registry {entry.host}"))
    if offline:
        uses.append(_Use("registries", OFFLINE_PLUGIN, "stella.yaml", "images from the offline mirror"))
    elif repository is not None:
        configured = {entry.host for entry in settings.registries}
        for rel_name, release in sorted(repository.releases.items()):
            hosts = {c.ref.registry for c in release.components.values() if c.pinned_digest is None}
            for host in sorted(hosts - configured):
                uses.append(_Use("registries", "oci", f"releases/{rel_name}.yaml", f"registry {host}"))
    uses.append(_Use("signers", settings.signer.plugin, "stella.yaml", "evidence signing"))
    unique: dict[tuple[str, str, str], _Use] = {}
    for use in uses:
        unique.setdefault((use.kind, use.name, use.where), use)
    return list(unique.values())


def _manifest_of(plugins: Sequence[PluginInfo], kind: str, name: str) -> PluginManifest | None:
    for p in plugins:
        if p.kind == kind and p.name == name and p.manifest is not None:
            return p.manifest
    return None


def _usable(plugins: Sequence[PluginInfo], kind: str, name: str) -> PluginInfo | None:
    """The entry point the core would use for (kind, name): a loaded one, else the last refused one."""
    same = [p for p in plugins if p.kind == kind and p.name == name]
    loaded = [p for p in same if p.health == "loaded"]
    chosen = loaded or same
    return chosen[-1] if chosen else None


def _in_use_check(uses: Sequence[_Use], plugins: Sequence[PluginInfo], manifests_valid: bool) -> Check:
    broken = {(p.kind, p.name): p.reason for p in plugins if p.health != "loaded"}
    core_view = Plugins(broken={k: v for k, v in broken.items() if k[0] in GROUPS})
    problems = []
    for use in uses:
        info = _usable(plugins, use.kind, use.name)
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


def _offline_check(
    uses: Sequence[_Use], plugins: Sequence[PluginInfo], offline_why: str, settings: Settings
) -> Check:
    networked = []
    for use in uses:
        info = _usable(plugins, use.kind, use.name)
        if info is not None and info.manifest is not None and info.manifest.network:
            networked.append(use)
    if not offline_why:
        if not networked:
            return Check("offline", "ok", "offline mode is off; no plugin in use needs the network")
        names = sorted({f"{_NOUNS[u.kind]} {u.name}" for u in networked})
        return Check("offline", "ok", f"offline mode is off; network plugins in use: {', '.join(names)}")
    problems = []
    notes = []
    for use in networked:
        refusal = (
            f"{_NOUNS[use.kind]} plugin {use.name!r} needs the network and offline mode is on ({offline_why})"
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


# --- registries ----------------------------------------------------------------------------------


def _registries_check(
    settings: Settings, tree: GitTree | None, offline_why: str, plugins: Sequence[PluginInfo]
) -> Check:
    if offline_why:
        layouts = f"{settings.mirror}/oci"
        if tree is not None and not tree.isdir(layouts):
            return Check(
                "registries",
                "warn",
                f"offline mode is on ({offline_why}) and there is no {layouts}/ in the repository: "
                "releases with tags only cannot be resolved",
            )
        return Check(
            "registries", "ok", f"skipped: offline mode is on ({offline_why}); images come from {layouts}/"
        )
    if not settings.registries:
        return Check("registries", "ok", "no registries configured (loopback registries need no entry)")
    details: list[str] = []
    worst: Status = "ok"
    for entry in settings.registries:
        manifest = _manifest_of(plugins, "registries", entry.plugin)
        if entry.path is not None or (manifest is not None and not manifest.network):
            where = entry.path or f"{settings.mirror}/oci"
            present = tree is not None and tree.isdir(where)
            status: Status = "ok" if present else "fail"
            line = f"{entry.host}: served from {where}/"
            line += "" if present else f" ({where}/ is not in the repository)"
        else:
            status, line = _probe(entry.host, insecure=entry.insecure)
        details.append(line)
        worst = _worse(worst, status)
    summary = {"ok": "every configured registry answers", "warn": "some registry answers oddly"}
    message = summary.get(worst, "some registry cannot be reached")
    return Check("registries", worst, f"{message} ({len(settings.registries)} configured)", tuple(details))


def _probe(host: str, *, insecure: bool) -> tuple[Status, str]:
    try:
        loopback = parse(f"{host}/probe").is_loopback
    except ReferenceError as exc:
        return "fail", f"{host}: not a registry host: {exc}"
    scheme = "http" if loopback or insecure else "https"
    endpoint = "registry-1.docker.io" if host == "docker.io" else host
    url = f"{scheme}://{endpoint}/v2/"
    try:
        with httpx.Client(timeout=PROBE_TIMEOUT, trust_env=not loopback) as client:
            status_code = client.get(url).status_code
    except httpx.HTTPError as exc:
        return "fail", f"{host}: unreachable: GET {url}: {_exc(exc)}"
    if status_code in (200, 401):
        return "ok", f"{host}: GET {url} answered {status_code}"
    return "warn", f"{host}: GET {url} answered HTTP {status_code} (a registry answers 200 or 401)"


def _worse(a: Status, b: Status) -> Status:
    order = ("ok", "warn", "fail")
    return a if order.index(a) >= order.index(b) else b


# --- the ratified policy -------------------------------------------------------------------------


def _ratified_view(repo: Repo, settings: Settings | None, tree: GitTree) -> Any:
    """The branch as decisions read it (governed files from the ratified policy), or None before any
    genesis (or when the branch's settings cannot be read)."""
    from .governance import PolicyView, read_pointer, stored_policy
    from .loop import evidence_ref

    if settings is None:
        return None
    head = repo.resolve_ref(evidence_ref(repo, settings))
    evidence = repo.tree(head) if head else None
    pointer = read_pointer(evidence) if evidence is not None else None
    if evidence is None or pointer is None or not isinstance(pointer.get("id"), str):
        return None
    try:
        return PolicyView(stored_policy(evidence, pointer["id"]), tree)
    except InvalidInput:
        return None


def _policy_check(view: Any, tree: GitTree, settings: Settings) -> Check:
    """The ratified policy, whether the branch proposes another, and whether anyone can ratify one."""
    from .governance import Policy, governed_files
    from .manifests import load_settings

    ratified = view.policy
    proposed = Policy.of(governed_files(tree))
    governance = load_settings(view).governance
    notes: list[str] = []
    status: Status = "ok"
    if governance is None:
        status = "warn"
        notes.append("the ratified stella.yaml has no `governance:`: nobody can ratify a policy change")
    else:
        groups = ", ".join(governance.groups)
        notes.append(f"policy changes need {governance.required} approval(s) from {groups}")
    if proposed.id != ratified.id:
        status = "warn"
        changed = ", ".join(proposed.changed_from(ratified)[:5])
        notes.append(
            f"the branch proposes policy {proposed.id} ({changed}): decisions stay under the ratified one "
            "until it is approved (`stella policy status`)"
        )
    return Check("policy", status, f"ratified policy {ratified.id}", tuple(notes))


# --- keys ----------------------------------------------------------------------------------------


def _signing_key_check(settings: Settings | None, tree: GitTree | None, environ: Mapping[str, str]) -> Check:
    name = "signing-key"
    signer = settings.signer if settings is not None else None
    if signer is not None and signer.plugin != "key":
        return Check(name, "ok", f"the signer is {signer.plugin!r}: no managed evidence key to check")
    reference = signer.key if signer is not None else "env:STELLA_SIGNING_KEY"
    try:
        path = resolve_key_path(reference, environ)
    except InvalidInput as exc:
        return Check(name, "fail", str(exc))
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        with path.open("rb"):
            pass
    except OSError as exc:
        return Check(name, "fail", f"{path}: cannot read the signing key: {exc.strerror or exc}")
    try:
        public = load_private_key(path).public_key()
    except InvalidInput as exc:
        return Check(name, "fail", str(exc))
    hint = key_hint(public)
    notes: list[str] = []
    status: Status = "ok"
    if mode & 0o077:
        status = "warn"
        notes.append(f"{path} has mode {mode:04o}: group or others can read it; run `chmod 600 {path}`")
    if tree is None:
        notes.append(f"not compared with {KEYS_DIR}/: the repository cannot be read")
        return Check(name, _worse(status, "warn"), f"{path}: P-256 key, hint {hint}", tuple(notes))
    trusted, bad = _trusted_keys(tree)
    notes += bad
    if hint not in trusted:
        message = (
            f"{path}: its public key (hint {hint}) is not in {KEYS_DIR}/ on the branch: the records it "
            f"signs would not verify; commit {path}.pub (or the output of `stella keys generate`) there"
        )
        return Check(name, "fail", message, tuple(notes))
    if bad:
        status = "fail"
    message = f"{path}: P-256 key, hint {hint}, trusted by {trusted[hint]}"
    return Check(name, status, message, tuple(notes))


def _trusted_keys(tree: GitTree) -> tuple[dict[str, str], list[str]]:
    """(hint -> file) of the trusted evidence keys, and a problem for each unreadable key file."""
    trusted: dict[str, str] = {}
    bad: list[str] = []
    for file_name in sorted(tree.listdir(KEYS_DIR)):
        if not file_name.endswith(".pub"):
            continue
        source = f"{KEYS_DIR}/{file_name}"
        try:
            trusted.setdefault(key_hint(load_public_key(tree.read(source) or b"", source)), source)
        except InvalidInput as exc:
            bad.append(f"{exc} (`stella audit verify` refuses to run with it)")
    return trusted, bad


def _allowed_signers_check(tree: GitTree, repository: Repository | None) -> Check:
    name = "allowed-signers"
    needing = sorted(
        env
        for env, environment in (repository.environments.items() if repository else ())
        if environment.approvals is not None and environment.approvals.required > 0
    )
    raw = tree.read(ALLOWED_SIGNERS)
    lines = [
        (number, line.strip())
        for number, line in enumerate((raw or b"").decode("utf-8", "replace").splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not lines:
        what = "does not exist" if raw is None else "lists no keys"
        if needing:
            message = (
                f"{ALLOWED_SIGNERS} {what}: no approval can be verified, and environments "
                f"{', '.join(needing)} require approvals"
            )
            return Check(name, "warn", message)
        return Check(name, "ok", f"{ALLOWED_SIGNERS} {what} (no environment requires approvals)")
    problems = [
        f"{ALLOWED_SIGNERS}:{number}: expected `<identity> [options] <key type> <base64 key>`"
        for number, line in lines
        if len(line.split()) < 3
    ]
    accepted = _ssh_keygen_problems(raw or b"")
    if accepted is None:
        status: Status = "fail" if problems else "warn"
        message = f"{len(lines)} line(s); ssh-keygen is not installed: approvals cannot be verified"
        return Check(name, status, message, tuple(problems))
    problems += [p for p in accepted if p not in problems]
    if problems:
        message = f"{len(problems)} problem(s) in {len(lines)} line(s), first: {problems[0]}"
        return Check(name, "fail", message, tuple(problems))
    return Check(name, "ok", f"{len(lines)} signer(s); ssh-keygen accepts every line")


def _ssh_keygen_problems(allowed: bytes) -> list[str] | None:
    """What ssh-keygen says is wrong with an allowed-signers file (None: no ssh-keygen).

    ssh-keygen parses the whole file when it looks for the signer of a signature no line matches:
    a throwaway key signs a throwaway message in a temporary directory, and each line it cannot parse
    is reported as `<file>:<line>: <why>`.
    """
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        return None
    with tempfile.TemporaryDirectory(prefix="stella-doctor-") as tmp:
        allowed_path, key, message = Path(tmp) / "allowed_signers", Path(tmp) / "key", Path(tmp) / "message"
        allowed_path.write_bytes(allowed)
        message.write_bytes(b"stella doctor\n")

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([keygen, *argv], capture_output=True, text=True, timeout=30, check=False)

        try:
            run("-q", "-t", "ed25519", "-N", "", "-C", "stella-doctor", "-f", str(key))
            run("-Y", "sign", "-f", str(key), "-n", "stella-doctor", str(message))
            found = run("-Y", "find-principals", "-f", str(allowed_path), "-s", f"{message}.sig")
        except (OSError, subprocess.SubprocessError) as exc:
            return [f"{ALLOWED_SIGNERS}: ssh-keygen could not check it: {_exc(exc)}"]
    pattern = re.compile(rf"^{re.escape(str(allowed_path))}:(\d+): (.+)$")
    problems = []
    for line in found.stderr.splitlines():
        match = pattern.match(line.strip())
        if match:
            problems.append(f"{ALLOWED_SIGNERS}:{match[1]}: ssh-keygen: {match[2]}")
    return problems


# --- Git, clock, evidence ------------------------------------------------------------------------


def _git_access_check(repo: Repo, settings: Settings | None) -> Check:
    targets = [repo.path / "objects", repo.path / "refs"]
    blocked = [str(p) for p in targets if not os.access(p, os.W_OK | os.X_OK)]
    if blocked:
        return Check(
            "git-access",
            "fail",
            f"cannot write {', '.join(blocked)}: the reconciler could not commit evidence",
        )
    return Check("git-access", "ok", f"can write objects and refs in {repo.path}")


@dataclass
class _Evidence:
    """What the evidence ref says, read cheaply: its head, each pointer, and the newest decision."""

    head: str | None
    problems: list[str] = field(default_factory=list)
    chains: int = 0
    newest: tuple[datetime, str] | None = None


def _read_evidence(repo: Repo, ref: str) -> _Evidence:
    head = repo.resolve_ref(ref)
    found = _Evidence(head)
    if head is None:
        return found
    try:
        tree = repo.tree(head)
    except StellaError as exc:
        found.problems.append(str(exc))
        return found
    for env in sorted(tree.listdir("environments")):
        path = pointer_path(env)
        raw = tree.read(path)
        if raw is None:
            continue
        found.chains += 1
        try:
            data = json.loads(raw)
            head_id = str(data["head"])
        except (ValueError, KeyError, TypeError) as exc:
            found.problems.append(f"{path}: not a pointer: {_exc(exc)}")
            continue
        hex_id = head_id.removeprefix("sha256:")
        statement = tree.read(evidence_path(hex_id))
        if statement is None:
            found.problems.append(
                f"{path}: its head {head_id} is not on the branch ({evidence_path(hex_id)})"
            )
            continue
        if tree.read(bundle_path(hex_id)) is None:
            found.problems.append(
                f"{path}: its head {head_id} has no signature bundle ({bundle_path(hex_id)})"
            )
        try:
            decided = datetime.fromisoformat(json.loads(statement)["predicate"]["decidedAt"])
        except (ValueError, KeyError, TypeError) as exc:
            found.problems.append(f"{evidence_path(hex_id)}: no readable decidedAt: {_exc(exc)}")
            continue
        if decided.tzinfo is None:
            decided = decided.replace(tzinfo=UTC)
        if found.newest is None or decided > found.newest[0]:
            found.newest = (decided, env)
    return found


def _clock_check(evidence: _Evidence, now: datetime) -> Check:
    if evidence.newest is None:
        return Check("clock", "ok", f"{_utc(now)}; no evidence decision to compare it with yet")
    newest, env = evidence.newest
    if now < newest:
        return Check(
            "clock",
            "warn",
            f"the system clock ({_utc(now)}) is before the newest evidence decision ({_utc(newest)}, "
            f"environment {env}): new records would seem older than it; check the clock (NTP)",
        )
    return Check("clock", "ok", f"{_utc(now)}, after the newest evidence decision ({_utc(newest)})")


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _evidence_check(evidence: _Evidence, ref: str) -> Check:
    if evidence.head is None and evidence.problems:
        return Check("evidence", "fail", evidence.problems[0])
    if evidence.head is None:
        return Check("evidence", "ok", f"{ref} does not exist yet: the first recorded decision creates it")
    where = f"{ref} at {evidence.head[:12]}"
    if evidence.problems:
        message = f"{where}: {len(evidence.problems)} problem(s), first: {evidence.problems[0]}"
        return Check("evidence", "fail", message, tuple(evidence.problems))
    return Check(
        "evidence",
        "ok",
        f"{where}: {evidence.chains} environment chain head(s) present (`stella audit verify` checks it all)",
    )


# --- third-party checks --------------------------------------------------------------------------


def _third_party_checks(plugins: Iterable[PluginInfo], repo_path: Path) -> list[Check]:
    checks: list[Check] = []
    for info in plugins:
        if info.kind != "doctor" or info.health != "loaded" or not isinstance(info.obj, DoctorPlugin):
            continue
        plugin = info.obj
        label = f"doctor plugin {info.name!r}"
        try:
            results = _bounded(functools.partial(plugin.check, repo_path), CHECK_TIMEOUT)
        except TimeoutError:
            checks.append(Check(info.name, "fail", f"{label} did not answer within {CHECK_TIMEOUT:g}s"))
            continue
        except Exception as exc:  # a failing plugin must not crash the doctor
            checks.append(Check(info.name, "fail", f"{label} raised {_exc(exc)}"))
            continue
        if not isinstance(results, Sequence) or isinstance(results, str | bytes):
            checks.append(Check(info.name, "fail", f"{label} returned {results!r}, not a list of checks"))
            continue
        checks.extend(_as_check(item, info.name, label) for item in results)
    return checks


def _bounded(job: Callable[[], object], timeout: float) -> object:
    """`job()` on a daemon thread; its value, its exception, or TimeoutError (the thread is left)."""
    answer: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()

    def run() -> None:
        try:
            answer.put((True, job()))
        except Exception as exc:
            answer.put((False, exc))

    threading.Thread(target=run, name="stella-doctor-check", daemon=True).start()
    try:
        ok, value = answer.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError from None
    if not ok:
        assert isinstance(value, Exception)
        raise value
    return value


def _as_check(item: object, plugin: str, label: str) -> Check:
    def field_of(key: str) -> object:
        return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)

    name, status, message = field_of("name"), field_of("status"), field_of("message")
    details = field_of("details") or ()
    statuses: dict[object, Status] = {"ok": "ok", "warn": "warn", "fail": "fail"}
    checked = statuses.get(status) if isinstance(status, str) else None
    if not (isinstance(name, str) and isinstance(message, str) and isinstance(details, list | tuple)):
        checked = None
    if checked is None or not isinstance(details, list | tuple):
        return Check(plugin, "fail", f"{label} returned an invalid check: {item!r}")
    return Check(f"{plugin}/{name}", checked, str(message), tuple(str(d) for d in details))
