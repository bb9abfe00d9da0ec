"""Release locks: reading them from the evidence branch, and locking new releases within the limits.

A release is locked once: its tags resolve to digests through the registry plugins and the lock is
written to `releases/<name>.json` on the evidence branch; a release file that later disagrees with its
lock is a problem, never a new lock. `limits.newDigestsPerDay` defers releases whose new digests would go
over the day's budget. Reads Git through `repo.py`; writes nothing (the pass commits what it returns).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from .errors import InvalidInput, Problem, StellaError, Transient
from .ledger import release_lock_path
from .models import Release, ReleaseLock, Repository
from .repo import GitTree, Repo
from .resolve import Resolver, check_lock, resolve_release
from .results import PassResult


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


def digests_locked_since(repo: Repo, head: str | None, since: datetime) -> set[str]:
    """Digests of the release locks the evidence branch gained at or after `since` (walks back only
    over the commits of that period)."""
    if head is None:
        return set()
    tree = repo.tree(head)
    digests: set[str] = set()
    for commit_id, parent in repo.first_parent_since(head, since):
        for path in repo.added_paths(parent, commit_id, "releases/") if parent else tree.listdir("releases"):
            name = path.rsplit("/", 1)[-1].removesuffix(".json")
            lock = read_lock(tree, name)
            if lock is not None:
                digests |= {c.digest for c in lock.components.values()}
    return digests


def lock_releases(
    repository: Repository,
    tree: GitTree | None,
    resolver: Resolver,
    result: PassResult,
    progress: Callable[[str], None] | None,
    budget: DigestBudget | None = None,
) -> tuple[dict[str, ReleaseLock], dict[str, ReleaseLock]]:
    """(all usable locks, new ones to write). Releases whose file disagrees with their lock are problems;
    releases whose new digests would go over `limits.newDigestsPerDay` wait for the next day."""
    usable: dict[str, ReleaseLock] = {}
    new: dict[str, ReleaseLock] = {}
    for name, release in sorted(repository.releases.items()):
        existing = read_lock(tree, name) if tree else None
        if existing is not None:
            differences = check_lock(release, existing)
            if differences:
                result.problems.append(_lock_problem(release, existing, differences))
            else:
                usable[name] = existing
            continue
        if progress:
            progress(f"resolving release {name}")
        try:
            lock = resolve_release(release, resolver)
            if budget is not None and not budget.take(lock, result):
                continue
            usable[name] = new[name] = lock
        except Transient as exc:
            result.transient.append(f"release {name}: {exc}")
        except StellaError as exc:
            result.problems.append(Problem(f"releases/{name}.yaml", None, str(exc)))
    return usable, new


@dataclass
class DigestBudget:
    """`limits.newDigestsPerDay`: the digests locked today, and the limit they count against."""

    hard: int
    soft: int | None
    used: set[str]
    deferred: dict[str, str] = field(default_factory=dict)

    def take(self, lock: ReleaseLock, result: PassResult) -> bool:
        """Count the lock's new digests; False (with a message) when they would go over the hard limit."""
        fresh = {c.digest for c in lock.components.values()} - self.used
        total = len(self.used) + len(fresh)
        if total > self.hard:
            message = (
                f"release {lock.name} not locked: limits.newDigestsPerDay: {len(self.used)} of {self.hard} "
                f"used today (UTC) and it adds {len(fresh)}; it will be locked on a later day"
            )
            result.limits.append(message)
            self.deferred[lock.name] = message
            return False
        if self.soft is not None and total > self.soft:
            result.limits.append(
                f"warning: limits.newDigestsPerDay: {total} of {self.hard} used today, "
                f"over the soft limit of {self.soft}"
            )
        self.used |= fresh
        return True
