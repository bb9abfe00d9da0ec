"""The reconcile pass: read the repository at its branch, decide, and write one evidence commit.

`reconcile()` is one pass: fetch the branch commit -> load and validate manifests -> lock new releases
(resolving their tags once) -> commit everything new to the evidence ref in ONE commit, moved by
compare-and-swap. A lost race re-reads the evidence ref and recomputes what is still missing, so each
release is locked exactly once. Resolution (network) happens before the race loop and is not repeated.
This module does no printing; the CLI reports the returned `PassResult`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from .discover import Plugins
from .errors import InvalidInput, Problem, StellaError, Transient
from .evidence import canonical, release_lock_path
from .manifests import load_repository, load_settings
from .models import Release, ReleaseLock, Repository
from .repo import GitTree, RaceLost, Repo
from .resolve import Resolver, check_lock, resolve_release

log = logging.getLogger(__name__)

MAX_RACES = 10


@dataclass
class PassResult:
    """What one pass did: the commit it read and the one it wrote, and what it could not do."""

    source_commit: str
    evidence_commit: str | None = None
    locked: list[ReleaseLock] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    transient: list[str] = field(default_factory=list)
    races: int = 0


def source_commit(repo: Repo, branch: str | None = None) -> tuple[str, str]:
    """(branch, commit) the reconciler reads: `branch` or the one `stella.yaml` at HEAD names."""
    if branch is None:
        head = repo.resolve_ref("HEAD")
        branch = load_settings(repo.tree(head)).branch if head else "main"
    commit = repo.resolve_ref(f"refs/heads/{branch}")
    if commit is None:
        raise InvalidInput(f"{repo.path}: branch {branch!r} does not exist (stella.yaml `branch:`)")
    return branch, commit


def read_lock(tree: GitTree, name: str) -> ReleaseLock | None:
    raw = tree.read(release_lock_path(name))
    if raw is None:
        return None
    try:
        return ReleaseLock.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise InvalidInput(f"evidence {release_lock_path(name)}: unreadable release lock: {exc}") from exc


def _lock_problem(release: Release, existing: ReleaseLock, differences: list[str]) -> Problem:
    return Problem(
        f"releases/{release.name}.yaml",
        None,
        f"release {release.name!r} was locked as {existing.id} and its file now differs "
        f"({'; '.join(differences)}); a release's digests never change: create a new release",
    )


def reconcile(
    repo: Repo,
    plugins: Plugins,
    *,
    branch: str | None = None,
    offline: bool = False,
    progress: Callable[[str], None] | None = None,
) -> PassResult:
    """One reconcile pass -> at most one commit on the evidence ref."""
    branch, commit = source_commit(repo, branch)
    repository: Repository = load_repository(repo.tree(commit))
    ref = repository.settings.evidence.ref
    result = PassResult(source_commit=commit)

    evidence_head = repo.resolve_ref(ref)
    tree = repo.tree(evidence_head) if evidence_head else None
    wanted: dict[str, ReleaseLock] = {}
    with Resolver(repository.settings, plugins, repo.tree(commit), offline=offline) as resolver:
        for name, release in sorted(repository.releases.items()):
            existing = read_lock(tree, name) if tree else None
            if existing is not None:
                differences = check_lock(release, existing)
                if differences:
                    result.problems.append(_lock_problem(release, existing, differences))
                continue
            if progress:
                progress(f"resolving release {name}")
            try:
                wanted[name] = resolve_release(release, resolver)
            except Transient as exc:
                result.transient.append(f"release {name}: {exc}")
            except StellaError as exc:
                result.problems.append(Problem(f"releases/{name}.yaml", None, str(exc)))

    for _ in range(MAX_RACES):
        tree = repo.tree(evidence_head) if evidence_head else None
        files: dict[str, bytes] = {}
        for name, new in sorted(wanted.items()):
            existing = read_lock(tree, name) if tree else None
            if existing is None:
                files[release_lock_path(name)] = canonical(new.model_dump(mode="json"))
        if not files:
            result.locked = []
            return result
        message = _message(commit, branch, len(files))
        try:
            result.evidence_commit = repo.commit_files(ref, evidence_head, files, message)
        except RaceLost:
            result.races += 1
            evidence_head = repo.resolve_ref(ref)
            continue
        result.locked = [wanted[p.split("/")[-1].removesuffix(".json")] for p in sorted(files)]
        return result
    raise Transient(f"{ref} kept moving: gave up after {MAX_RACES} attempts")


def _message(commit: str, branch: str, count: int) -> str:
    return f"stella: lock {count} release(s) from {branch}@{commit[:12]}\n\nStella-Source-Commit: {commit}\n"
