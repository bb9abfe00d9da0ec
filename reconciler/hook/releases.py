"""The guard of the main branch: a push keeps every release as it was written and as it was locked.

`check_branch` refuses a push that changes an existing release's components, images (repository or
tag) or pinned digests, disagrees with the release's lock on the evidence ref (as it is, or as the same
push leaves it), deletes a locked release, or adds or changes a release file that does not load (the
loader's problem, with file and line). Reads the repository; never writes to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import Problem
from ..locking import read_lock
from ..manifests import Loader
from ..models import Release
from ..repo import GitTree, Repo
from ..resolve import check_lock
from .guard import Guarded, RefUpdate, Rejection, peel_commit, ref_target

_NEVER_CHANGES = "a release never changes: create a new release"


def check_branch(
    repo: Repo, update: RefUpdate, guarded: Guarded, updates: Sequence[RefUpdate]
) -> list[Rejection]:
    """Every reason the update of the main branch must be refused (`updates`: the whole push, whose
    update of the evidence ref may add the locks this one is checked against)."""
    evidence = _evidence_trees(repo, guarded, updates)
    ref = update.refname
    old = None if update.created else repo.tree(str(peel_commit(repo, update.old).id))
    new = None if update.deleted else repo.tree(str(peel_commit(repo, update.new).id))
    commit = update.old if update.deleted else update.new
    old_releases, _ = _releases(old)
    new_releases, problems = _releases(new)
    changed = _changed_files(old, new, "releases")
    rejections = [
        Rejection(ref, p.message, file=p.file, line=p.line, commit=commit)
        for p in sorted(problems)
        if p.file in changed
    ]
    for path in sorted(changed):
        name = path.removeprefix("releases/").removesuffix(".yaml")
        if not path.endswith(".yaml") or "/" in name:
            continue
        lock = next(filter(None, (read_lock(tree, name) for tree in evidence)), None)
        release = new_releases.get(name)
        if new is None or new.read(path) is None:
            if lock is not None:
                reason = f"release {name!r} is locked as {lock.id} and cannot be deleted; {_NEVER_CHANGES}"
                rejections.append(Rejection(ref, reason, file=path, commit=commit))
            continue
        if release is None:
            continue  # it does not load: its problems are rejected above
        differences = _differences(old_releases[name], release) if name in old_releases else []
        differences += check_lock(release, lock) if lock else []
        if differences:
            locked = f" (locked as {lock.id})" if lock else ""
            reason = f"release {name!r}{locked} changed: {'; '.join(dict.fromkeys(differences))}"
            rejections.append(Rejection(ref, f"{reason}; {_NEVER_CHANGES}", file=path, commit=commit))
    return rejections


def _differences(old: Release, new: Release) -> list[str]:
    """How `new` changes what `old` pinned: components, images (repository or tag) and digests.

    Worded like `resolve.check_lock`, so that the same difference found both ways is said once. A
    digest added where there was none is not a change here (the lock decides whether it agrees).
    """
    out = []
    if set(old.components) != set(new.components):
        out.append(f"components changed from {sorted(old.components)} to {sorted(new.components)}")
    for name in sorted(set(old.components) & set(new.components)):
        before, after = old.components[name], new.components[name]
        if before.ref.repo != after.ref.repo:
            out.append(f"{name}: image changed from {before.ref.repo} to {after.ref.repo}")
        elif before.ref.tag != after.ref.tag:
            out.append(f"{name}: tag changed from {before.ref.tag} to {after.ref.tag}")
        pinned = before.pinned_digest
        if pinned is not None and after.pinned_digest is None:
            out.append(f"{name}: digest {pinned} removed")
        elif pinned is not None and after.pinned_digest != pinned:
            out.append(f"{name}: digest changed from {pinned} to {after.pinned_digest}")
    return out


def _releases(tree: GitTree | None) -> tuple[dict[str, Release], list[Problem]]:
    """The releases that load at a commit, and the loader's problems with the others."""
    if tree is None:
        return {}, []
    loader = Loader(tree)
    loaded = loader._named("releases", Release, "Release")
    return {name: release for name, (release, _) in loaded.items()}, loader.problems


def _changed_files(old: GitTree | None, new: GitTree | None, directory: str) -> set[str]:
    """Paths directly in `directory` whose content differs between two commits (added, changed, gone)."""
    names = set(old.listdir(directory) if old else []) | set(new.listdir(directory) if new else [])
    changed = set()
    for name in names:
        path = f"{directory}/{name}"
        before = old.read(path) if old else None
        after = new.read(path) if new else None
        if before != after:
            changed.add(path)
    return changed


def _evidence_trees(repo: Repo, guarded: Guarded, updates: Sequence[RefUpdate]) -> list[GitTree]:
    """Where release locks are read: the evidence ref as it is, then as this push would leave it (a lock
    the push adds counts too; one it would remove still counts)."""
    heads = [ref_target(repo, guarded.evidence_ref)]
    heads += [
        str(peel_commit(repo, u.new).id)
        for u in updates
        if u.refname == guarded.evidence_ref and not u.deleted
    ]
    return [repo.tree(head) for head in dict.fromkeys(heads) if head]
