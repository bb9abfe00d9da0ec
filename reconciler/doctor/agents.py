"""The `agents` check: can the deployment agents of the repository's targets work (DESIGN §9)?

Run only when some environment has `targets:`. For each target: its agent plugin (`targets[].agent`,
group `stella.agents`) is installed and usable here; the ratified policy holds its agent key
`trust/agent-keys/<target>.pub` (before the genesis: the branch, which the genesis ratifies) and the key
is a readable P-256 public key; and, when the engine is this machine's to reach -- the endpoint is a
unix socket that exists here, or `STELLA_DOCTOR_ENGINE=1` asks for every endpoint -- that the engine
answers (the plugin opens it, `running(project)`, bounded in time).

A missing plugin, a missing key or an engine that does not answer is a warning (agents often run on
other hosts than the reconciler); a key file that is not a P-256 public key is a failure.

Must not: import an agent plugin's package (only what `scan_plugins` loaded, through the
`AgentPlugin` Protocol), deploy or change anything on an engine, reach an engine over the network in
offline mode, or write anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from ..errors import InvalidInput
from ..governance import agent_key_path
from ..protocols import AgentDiagnosis, AgentPlugin, AgentTarget, DoctorCheck
from ..sign import key_hint, load_public_key
from .plugins import NOUNS, PluginInfo, usable
from .result import Check, Status, bounded, error_text, worse

if TYPE_CHECKING:
    from ..models import Repository
    from ..protocols import FileSource

ENGINE_ENV = "STELLA_DOCTOR_ENGINE"
"""`STELLA_DOCTOR_ENGINE=1`: check every target's engine, not only local unix sockets that exist."""
ENGINE_TIMEOUT = 10.0
"""Seconds an engine has to list a project's containers."""


@dataclass(frozen=True)
class _Target:
    environment: str
    name: str
    agent: str
    endpoint: str
    project: str

    @property
    def label(self) -> str:
        return f"{self.environment}/{self.name}"


def has_targets(repository: Repository | None) -> bool:
    return repository is not None and any(e.targets for e in repository.environments.values())


def agents_check(
    repository: Repository,
    tree: FileSource,
    governed: FileSource | None,
    plugins: Sequence[PluginInfo],
    environ: Mapping[str, str],
    *,
    offline: bool,
) -> Check:
    """The `agents` check of every target of `repository` (the branch's manifests). `governed` is the
    branch as the ratified policy serves it (None before the genesis: then the keys come from `tree`)."""
    targets = [
        _Target(env.name, t.name, t.agent, t.endpoint, t.project)
        for _, env in sorted(repository.environments.items())
        for t in env.targets
    ]
    status: Status = "ok"
    problems: list[str] = []
    notes: list[str] = []
    engines = 0
    for target in targets:
        plugin, found = _plugin(target, plugins)
        if found is not None:
            status = worse(status, "warn")
            problems.append(found)
        key_status, key_message = _key(target.name, tree, governed)
        if key_status != "ok":
            status = worse(status, key_status)
            problems.append(key_message)
        elif key_message:
            notes.append(key_message)
        if plugin is None:
            continue
        for diagnosed in _diagnose(plugin, target, environ):
            if diagnosed.status == "ok":
                notes.append(f"{target.label}: {diagnosed.name}: {diagnosed.message}")
            else:
                status = worse(status, diagnosed.status)
                problems.append(f"{target.label}: {diagnosed.name}: {diagnosed.message}")
        probe = _probe_reason(target.endpoint, environ, offline=offline)
        if probe is not None:
            notes.append(f"engine of {target.label} not checked: {probe}")
            continue
        answered, message = _engine(plugin, target, environ)
        engines += answered
        if answered:
            notes.append(message)
        else:
            status = worse(status, "warn")
            problems.append(message)
    if problems:
        message = f"{len(problems)} problem(s) with {len(targets)} target(s), first: {problems[0]}"
        return Check("agents", status, message, tuple(problems + notes))
    agents = ", ".join(sorted({t.agent for t in targets}))
    where = "the ratified policy" if governed is not None else "the branch (the genesis ratifies it)"
    message = (
        f"{len(targets)} target(s): agent plugin(s) {agents} installed, each agent's key in {where}; "
        f"{engines} engine(s) answered"
    )
    return Check("agents", status, message, tuple(notes))


def _plugin(target: _Target, plugins: Sequence[PluginInfo]) -> tuple[AgentPlugin | None, str | None]:
    """(the usable plugin object, None), or (None, why it is not usable here)."""
    info = usable(plugins, "agents", target.agent)
    if info is not None and info.health == "loaded":
        return cast(AgentPlugin, info.obj), None
    noun = NOUNS["agents"]
    why = (
        f"{noun} plugin {target.agent!r} is not usable here: {info.reason}"
        if info is not None
        else f"{noun} plugin {target.agent!r} is not installed here (no stella.agents entry point)"
    )
    return None, f"{target.label}: {why}: its agent cannot run on this machine"


def _key(name: str, tree: FileSource, governed: FileSource | None) -> tuple[Status, str]:
    """(status, problem or note) of the agent key of target `name`."""
    path = agent_key_path(name)
    data = (governed or tree).read(path)
    if data is None:
        on_branch = governed is not None and tree.read(path) is not None
        if on_branch:
            until = f"the policy change adding {path} is ratified (`stella policy status`)"
        elif governed is not None:
            until = f"{path} (its public key, from `stella keys generate`) is in the ratified policy"
        else:
            until = f"{path} (its public key, from `stella keys generate`) is committed for the genesis"
        return "warn", f"the agent of {name} cannot record deployments until {until}"
    try:
        hint = key_hint(load_public_key(data, path))
    except InvalidInput as exc:
        where = "in the ratified policy" if governed is not None else "on the branch"
        return "fail", f"{exc} ({where}): the agent of {name} cannot record deployments"
    return "ok", f"{path}: P-256 key, hint {hint}"


def _probe_reason(endpoint: str, environ: Mapping[str, str], *, offline: bool) -> str | None:
    """Why the engine at `endpoint` is not checked (None: check it)."""
    parts = urlsplit(endpoint)
    local = parts.scheme == "unix"
    if environ.get(ENGINE_ENV) == "1":
        if offline and not local:
            return f"{endpoint} is reached over the network and offline mode is on"
        return None
    if not local:
        return f"{endpoint} is not a local socket ({ENGINE_ENV}=1 checks it)"
    if not Path(parts.path).is_socket():
        return f"{parts.path} is no socket on this machine ({ENGINE_ENV}=1 checks it anyway)"
    return None


def _diagnose(plugin: AgentPlugin, target: _Target, environ: Mapping[str, str]) -> list[DoctorCheck]:
    """What the plugin says this machine lacks to drive the target (its optional `diagnose`)."""
    if not isinstance(plugin, AgentDiagnosis):
        return []
    where = AgentTarget(target.environment, target.name, target.endpoint, target.project)
    try:
        found = bounded(lambda: list(plugin.diagnose(where, environ)), ENGINE_TIMEOUT, "stella-doctor-agent")
    except TimeoutError:
        return [DoctorCheck("diagnose", "warn", f"did not finish within {ENGINE_TIMEOUT:g} s")]
    except Exception as exc:  # a plugin that raises says nothing good about this machine
        return [DoctorCheck("diagnose", "warn", f"raised: {error_text(exc)}")]
    checks = [c for c in cast(list[object], found) if isinstance(c, DoctorCheck)]
    return checks


def _engine(plugin: AgentPlugin, target: _Target, environ: Mapping[str, str]) -> tuple[bool, str]:
    """(answered, what it said) of the target's engine, asked for the project's containers."""
    where = AgentTarget(target.environment, target.name, target.endpoint, target.project)

    def ask() -> int:
        engine = plugin.open(where, environ)
        try:
            return len(engine.running(target.project))
        finally:
            engine.close()

    try:
        count = cast(int, bounded(ask, ENGINE_TIMEOUT, "stella-doctor-engine"))
    except TimeoutError:
        return False, (
            f"the engine of {target.label} at {target.endpoint} did not answer within {ENGINE_TIMEOUT:g} s"
        )
    except Exception as exc:  # whatever the plugin raises: the engine cannot be used from here
        return False, f"the engine of {target.label} at {target.endpoint} does not answer: {error_text(exc)}"
    return True, (
        f"the engine of {target.label} at {target.endpoint} answers: {count} container(s) of project "
        f"{target.project}"
    )
