"""Drift: what runs on a target against what should run there (DESIGN §9), and the config hash behind it.

- `config_labels(lock, state_dir)`: the labels the agent puts on each service's containers at `up`:
  `CONFIG_LABEL`, `sha256:` over the files the service bind-mounts from the agent's state directory
  (`${STELLA_STATE_DIR}/…` in the lock, or an absolute path under it), and `CONFIG_FILES_LABEL`, the
  JSON list of those absolute paths. A service that mounts nothing from there gets the hash of the
  empty set: every container Stella starts is labelled.
- `config_hash(paths)`: that hash. sha256 over the canonical JSON of the sorted `[path, digest]` pairs
  of every file: a file's `sha256:` of its bytes; a directory, each file under it (symbolic links to
  directories as `symlink:<target>`, not followed); a missing path `missing`, anything but a regular
  file (a socket, a FIFO) `not-a-file`, one that cannot be read `unreadable`.
- `compare(target, lock, containers)`: the drift items of one target, in a fixed order (service, then
  kind in `KINDS` order, then container id). Per service of the lock, the containers of that service
  (by their Compose service label) are ranked (the lock's digest first, then running, then labelled by
  Stella, then by id); the first `replicas` of them (`scale`, else `deploy.replicas`, else 1; 0 for a
  service with `profiles`, which the agent never starts) are the service's, the others are `extra`.
  So a second container started by hand beside a service's own is `extra`, while a service whose only
  container runs another digest is `digest`. Items: `missing` (fewer containers than replicas),
  `extra` (a container of a service the lock does not have, or one too many), `digest` (runs another
  digest than the lock pins, or one the engine does not know), `stopped` (state other than
  `running`), `config` (its `CONFIG_LABEL` differs from `config_hash` of the files its
  `CONFIG_FILES_LABEL` lists, as they are now on this machine; or it has no such label, or one listing
  a path the service does not mount: `<any root>/<path>` for `${STELLA_STATE_DIR}/<path>`, an absolute
  source as written; so a label cannot make `compare` read anything else).
- `read_expected(repo, environment, target)`: what each target should run, read from the evidence
  branch the way `stella status` reads it (the environments of the ratified policy, each one's newest
  allowed verified decision, and its lock checked against its hash).

`compare` and `config_labels` read only the files they hash; `read_expected` reads the repository.
Nothing here prints, writes, or talks to an engine: `cli/drift.py` opens the engines.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from .errors import InvalidInput
from .evidence import sha256_hex
from .ledger import artifact_path
from .protocols import CONFIG_FILES_LABEL, CONFIG_LABEL, AgentTarget, RunningContainer
from .reference import ReferenceError, parse
from .render import LOCK_FILE, STATE_DIR_VAR

if TYPE_CHECKING:
    from .history import Record
    from .repo import GitTree, Repo

Kind = Literal["missing", "extra", "digest", "stopped", "config"]
KINDS: tuple[Kind, ...] = ("missing", "extra", "digest", "stopped", "config")

STATE_DIR_REF = "${" + STATE_DIR_VAR + "}"
MISSING = "missing"
NOT_A_FILE = "not-a-file"
UNREADABLE = "unreadable"

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class DriftItem:
    """One difference between what runs on `target` and what should run there."""

    target: str
    service: str
    """The Compose service (the container's service label for `extra`; empty when it has none)."""
    kind: Kind
    expected: str | None
    """What should be: the lock's image or digest, `running`, the config hash of the files now."""
    actual: str | None
    """What is: the digest or state the container has, its config label; None when there is nothing."""
    container: str | None = None
    """The container concerned (its id); None for `missing`."""

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "service": self.service,
            "kind": self.kind,
            "expected": self.expected,
            "actual": self.actual,
            "container": self.container,
        }


# --- the config hash -----------------------------------------------------------------------------


def config_hash(paths: Iterable[str]) -> str:
    """`sha256:<hex>` over the files at `paths` as they are now (see the module docstring)."""
    entries: list[tuple[str, str]] = []
    for path in sorted(set(paths)):
        entries.extend(_entries(path))
    entries.sort()
    body = json.dumps(entries, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def _entries(path: str) -> list[tuple[str, str]]:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return [(path, MISSING)]
    except NotADirectoryError:
        return [(path, MISSING)]
    except OSError:
        return [(path, UNREADABLE)]
    if not stat.S_ISDIR(info.st_mode):
        return [(path, _file_digest(path))]
    found: list[tuple[str, str]] = []
    for directory, subdirectories, files in os.walk(path):
        subdirectories.sort()
        for name in list(subdirectories):
            full = os.path.join(directory, name)
            if os.path.islink(full):
                found.append((full, f"symlink:{os.readlink(full)}"))
        for name in sorted(files):
            full = os.path.join(directory, name)
            found.append((full, _file_digest(full)))
    return found


def _file_digest(path: str) -> str:
    """`sha256:` of a regular file's bytes; a marker for anything else (never blocks on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return MISSING
    except OSError:
        return UNREADABLE
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return NOT_A_FILE
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return UNREADABLE
    finally:
        os.close(fd)


def config_labels(lock: bytes, state_dir: Path) -> dict[str, dict[str, str]]:
    """Per service of `lock`: `{CONFIG_LABEL: "sha256:…", CONFIG_FILES_LABEL: "[…]"}` over the files it
    bind-mounts from `state_dir` (see the module docstring). Sources outside `state_dir` are ignored."""
    root = os.path.abspath(state_dir)
    labels: dict[str, dict[str, str]] = {}
    for name, service in _services(lock).items():
        paths = sorted(set(_state_mounts(service, root)))
        labels[name] = {
            CONFIG_LABEL: config_hash(paths),
            CONFIG_FILES_LABEL: json.dumps(paths, separators=(",", ":")),
        }
    return labels


def _state_mounts(service: Mapping[str, Any], root: str) -> Iterable[str]:
    """The absolute paths under `root` that `service` bind-mounts."""
    for source in _bind_sources(service):
        if source.startswith(STATE_DIR_REF):  # the variable's value is taken as it is; `$$` is a `$`
            source = root + source[len(STATE_DIR_REF) :].replace("$$", "$")
        else:
            source = source.replace("$$", "$")
        if not source.startswith("/"):
            continue
        path = posixpath.normpath("/" + source.lstrip("/"))
        if path.startswith(root.rstrip("/") + "/"):
            yield path


def _bind_sources(service: Mapping[str, Any]) -> Iterable[str]:
    """The sources of `service`'s bind mounts as the lock writes them (short and long syntax)."""
    volumes = service.get("volumes")
    for item in volumes if isinstance(volumes, list) else ():
        if isinstance(item, str):
            source, colon, _ = item.partition(":")
            if colon:
                yield source
        elif isinstance(item, dict) and item.get("type") == "bind" and isinstance(item.get("source"), str):
            yield item["source"]


# --- comparing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Service:
    image: str
    digest: str | None
    replicas: int
    suffixes: tuple[str, ...] = ()
    """`/<path>` of each `${STELLA_STATE_DIR}/<path>` bind source (the state directory is the agent's)."""
    paths: tuple[str, ...] = ()
    """The absolute bind sources, normalised."""

    def may_list(self, path: str) -> bool:
        """Whether a config label of this service's containers may list `path`: so that hashing reads
        nothing the lock does not mount, whatever a label says."""
        return path in self.paths or any(path.endswith(suffix) for suffix in self.suffixes)


def _services(lock: bytes) -> dict[str, dict[str, Any]]:
    """The `services` of a lock, as plain values (`InvalidInput` when it has none)."""
    try:
        root = yaml.load(lock, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{LOCK_FILE}: not YAML: {exc}") from exc
    services = root.get("services") if isinstance(root, dict) else None
    if not isinstance(services, dict) or not services:
        raise InvalidInput(f"{LOCK_FILE}: has no services")
    return {str(k): v if isinstance(v, dict) else {} for k, v in services.items()}


def _replicas(service: Mapping[str, Any]) -> int:
    if service.get("profiles"):
        return 0  # the agent starts no profile: Compose leaves such services out
    deploy = service.get("deploy")
    for value in (service.get("scale"), deploy.get("replicas") if isinstance(deploy, dict) else None):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return 1


def _expected(lock: bytes) -> dict[str, _Service]:
    found = {}
    for name, service in _services(lock).items():
        image = str(service.get("image", ""))
        try:
            digest = parse(image).digest
        except ReferenceError:
            digest = None
        suffixes, paths = [], []
        for source in _bind_sources(service):
            if source.startswith(STATE_DIR_REF):
                rest = source[len(STATE_DIR_REF) :].replace("$$", "$")
                suffixes.append("/" + posixpath.normpath(rest.lstrip("/")))
            elif source.startswith("/"):
                paths.append(posixpath.normpath("/" + source.replace("$$", "$").lstrip("/")))
        found[name] = _Service(image, digest, _replicas(service), tuple(suffixes), tuple(paths))
    return found


Hasher = Callable[[Sequence[str]], str]


def compare(
    target: str,
    lock: bytes,
    containers: Sequence[RunningContainer],
    *,
    hasher: Hasher = config_hash,
) -> list[DriftItem]:
    """The drift of one target: `containers` (what `Engine.running` listed) against `lock` (what should
    run), ordered by service, kind (`KINDS`) and container (see the module docstring). `hasher`
    recomputes a config hash from the paths a container's label lists (once per distinct list)."""
    services = _expected(lock)
    by_service: dict[str, list[RunningContainer]] = {}
    for container in containers:
        by_service.setdefault(container.service, []).append(container)
    hashes: dict[str, str] = {}
    items: list[DriftItem] = []
    for name, found in sorted(by_service.items()):
        if name not in services:
            items.extend(_extra(target, c) for c in found)
    for name, spec in sorted(services.items()):
        ranked = sorted(by_service.get(name, ()), key=functools.partial(_rank, spec=spec))
        kept, surplus = ranked[: spec.replicas], ranked[spec.replicas :]
        if len(kept) < spec.replicas:
            actual = None if not kept else f"{len(kept)} of {spec.replicas} containers"
            items.append(DriftItem(target, name, "missing", spec.image, actual))
        items.extend(_extra(target, c) for c in surplus)
        for container in kept:
            items.extend(_container_drift(target, name, spec, container, hasher, hashes))
    return sorted(items, key=lambda i: (i.service, KINDS.index(i.kind), i.container or ""))


def _rank(container: RunningContainer, spec: _Service) -> tuple[bool, bool, bool, str]:
    """Which containers of a service count as its own first: the right digest, running, labelled."""
    return (
        container.digest != spec.digest,
        container.state != "running",
        CONFIG_LABEL not in container.labels,
        container.container,
    )


def _extra(target: str, container: RunningContainer) -> DriftItem:
    runs = container.digest or container.image or "an unknown image"
    return DriftItem(
        target, container.service, "extra", None, f"{runs} ({container.state})", container.container
    )


def _container_drift(
    target: str,
    name: str,
    spec: _Service,
    container: RunningContainer,
    hasher: Hasher,
    hashes: dict[str, str],
) -> Iterable[DriftItem]:
    cid = container.container
    if container.digest != spec.digest:
        yield DriftItem(target, name, "digest", spec.digest, container.digest, cid)
    if container.state != "running":
        yield DriftItem(target, name, "stopped", "running", container.state or None, cid)
    label = container.labels.get(CONFIG_LABEL)
    if label is None:
        yield DriftItem(target, name, "config", f"a {CONFIG_LABEL} label", None, cid)
        return
    listed = container.labels.get(CONFIG_FILES_LABEL, "")
    paths = _paths(listed)
    if paths is None or not all(spec.may_list(p) for p in paths):
        expected = f"{CONFIG_FILES_LABEL}: a JSON list of paths the service mounts"
        yield DriftItem(target, name, "config", expected, listed, cid)
        return
    if listed not in hashes:
        hashes[listed] = hasher(paths)
    if hashes[listed] != label:
        yield DriftItem(target, name, "config", hashes[listed], label, cid)


def _paths(listed: str) -> list[str] | None:
    """The absolute paths a `CONFIG_FILES_LABEL` lists; None when it is not such a list."""
    try:
        value = json.loads(listed)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(p, str) and p.startswith("/") for p in value):
        return None
    return value


# --- what should run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What one target should run, as the evidence branch says it."""

    target: AgentTarget
    agent: str
    """The agent plugin the environment names for the target."""
    decision: str | None
    """The environment's newest allowed, verified decision (None: nothing allowed yet)."""
    release: str | None
    """That decision's release name."""
    lock: bytes | None
    """That decision's lock, checked against the digest the decision names."""


def read_expected(repo: Repo, environment: str | None = None, target: str | None = None) -> list[Expected]:
    """What each target of each environment of the ratified policy should run (of `environment` and
    `target` only, when given: `InvalidInput` when the policy has no such environment or target), as
    `stella status` reads it (`reconciler.status`), with the lock of each decision."""
    from .chain import open_evidence
    from .passes import source_commit
    from .status import environments_in_force

    source = repo.tree(source_commit(repo)[1])
    _, head, index = open_evidence(repo, source)
    try:
        evidence = repo.tree(head) if head else None
        policy, environments = environments_in_force(index, evidence, source)
        where = f"the ratified policy ({policy})" if policy else "the branch (nothing ratified yet)"
        if environment is not None:
            if environment not in environments:
                known = ", ".join(sorted(environments)) or "none"
                raise InvalidInput(f"no environment {environment!r} in {where}; environments: {known}")
            environments = {environment: environments[environment]}
        if target is not None:
            names = sorted(t.name for e in environments.values() for t in e.targets)
            if target not in names:
                scope = f"environment {environment!r}" if environment is not None else where
                raise InvalidInput(f"no target {target!r} in {scope}; targets: {', '.join(names) or 'none'}")
        found: list[Expected] = []
        for name, env in sorted(environments.items()):
            specs = [t for t in env.targets if target is None or t.name == target]
            if not specs:
                continue
            decision = index.current(name)
            lock = _lock(evidence, decision) if decision is not None else None
            found.extend(
                Expected(
                    AgentTarget(name, spec.name, spec.endpoint, spec.project),
                    spec.agent,
                    decision.evidence if decision is not None else None,
                    decision.release_name if decision is not None else None,
                    lock,
                )
                for spec in specs
            )
    finally:
        index.close()
    return found


def _lock(evidence: GitTree | None, decision: Record) -> bytes:
    """The lock a decision names, read from the evidence branch and checked against its digest."""
    digest = decision.artifacts.get(LOCK_FILE)
    if digest is None:
        raise InvalidInput(f"{decision.evidence} names no {LOCK_FILE}")
    path = artifact_path(digest, LOCK_FILE)
    data = evidence.read(path) if evidence is not None else None
    if data is None or sha256_hex(data) != digest:
        raise InvalidInput(
            f"{path}: missing, or its bytes do not hash to the digest {decision.evidence} names"
        )
    return data
