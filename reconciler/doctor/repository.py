"""The `repository` and `manifests` checks (the Git repository, `stella.yaml`, every manifest on its
branch), and `git-access` (can evidence commits be written).

`open_repository()` also hands the other checks what it read: the repository, its settings, the tree of
the branch and the parsed manifests (None for each that could not be read).

Must not: write to the repository, or raise for what it checks (a problem is a `fail`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import StellaError, ValidationFailed
from ..manifests import load_repository, load_settings
from ..models import Repository, Settings
from ..passes import source_commit
from ..repo import GitTree, Repo
from .result import Check, named


@dataclass
class RepositoryState:
    """The `repository` check, and what the other checks need of the repository."""

    check: Check
    repo: Repo | None = None
    settings: Settings | None = None
    commit: str | None = None
    tree: GitTree | None = None
    repository: Repository | None = None
    repository_check: Check | None = None
    """The `manifests` check (None when `stella.yaml` cannot be read)."""


def open_repository(path: Path) -> RepositoryState:
    try:
        repo = Repo(path)
    except StellaError as exc:
        return RepositoryState(Check("repository", "fail", str(exc)))
    try:
        branch, commit = source_commit(repo)
        tree = repo.tree(commit)
        settings = load_settings(tree)
    except ValidationFailed as exc:
        problems = exc.problems
        return RepositoryState(
            Check("repository", "fail", f"stella.yaml cannot be read: {problems[0]}", named(problems)), repo
        )
    except StellaError as exc:
        return RepositoryState(Check("repository", "fail", str(exc)), repo)
    where = repo.workdir or repo.path
    state = RepositoryState(
        Check("repository", "ok", f"{where}: branch {branch} at {commit[:12]}"), repo, settings, commit, tree
    )
    try:
        repository = load_repository(tree)
    except ValidationFailed as exc:
        problems = exc.problems
        message = f"{len(problems)} problem(s) on branch {branch}, first: {problems[0]}"
        state.repository_check = Check("manifests", "fail", message, named(problems))
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


def offline_reason(*, flag: bool, setting: bool) -> str:
    """Which setting turns offline mode on, as a message names it ('' when it is off)."""
    reasons = (["`offline: true` in stella.yaml"] if setting else []) + (["--offline"] if flag else [])
    return " and ".join(reasons)


def git_access_check(repo: Repo, settings: Settings | None) -> Check:
    targets = [repo.path / "objects", repo.path / "refs"]
    blocked = [str(p) for p in targets if not os.access(p, os.W_OK | os.X_OK)]
    if blocked:
        return Check(
            "git-access",
            "fail",
            f"cannot write {', '.join(blocked)}: the reconciler could not commit evidence",
        )
    return Check("git-access", "ok", f"can write objects and refs in {repo.path}")
