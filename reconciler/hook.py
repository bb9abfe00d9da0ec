"""The server-side guard: decide whether a push may land (`stella hook pre-receive`).

git's pre-receive hook hands over every ref update of a push (`old new refname`) before any ref moves.
`check_updates()` returns why the push must be refused, one `Rejection` per reason (empty: accept):

- every `refs/heads/stella/*` ref (the evidence ref among them) is only created or fast-forwarded:
  never deleted, never rewritten;
- no commit the update adds to it changes or deletes a file under `releases/`, `evidence/`, `inputs/`,
  `artifacts/`, `policies/` or `policy-files/` (the pointers `environments/<env>/stella.version.json`,
  `targets/<env>/<target>/stella.version.json` and `policy/stella.policy.json` may move), and every file
  it adds is one of the layout (DESIGN §4, §8);
- every statement it adds verifies under the policy it names (DESIGN §8): a decision with a key of a
  policy on the ratified chain, a ratification with a key of the policy before it; a ratification must
  extend the chain, a second genesis is refused, and the policy pointer must name the chain's head. The
  keys come from the policies stored on the evidence branch itself, never from `main`; only a branch
  that has no policy chain yet takes them from `trust/evidence-keys/` of the main branch;
- a push to the main branch (`branch:`, default `main`) keeps every existing release's components, images
  and pinned digests, and agrees with the release's lock on the evidence ref; a locked release is never
  deleted; a release file it adds or changes must load (the loader's problem, with file and line).

Checking reads the repository (including the objects git keeps in quarantine until the hook accepts
them) and never writes to it or moves a ref; anything it cannot check is a rejection too (fail closed).
`install()` writes the hook script into a repository's `hooks/` and nothing else. Nothing here prints:
`cli.py` reports. It guards one repository's refs; a hosted forge needs its own branch protection instead
(docs/hook.md). History walks, tree diffs and the quarantine go through `Repo.git` (pygit2), as in
`audit`; they belong in `repo.py` once it offers them.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pygit2

from .audit import IMMUTABLE, trusted_keys
from .errors import InvalidInput, Problem, StellaError, ValidationFailed
from .evidence import sha256_hex
from .governance import POINTER, RATIFICATION, Keyring, PolicyError, RecordRejected, read_pointer
from .loop import evidence_ref, read_lock
from .manifests import SETTINGS_FILE, Loader, load_settings
from .models import EvidenceSettings, Release, Settings
from .repo import GitTree, Repo
from .resolve import check_lock

log = logging.getLogger(__name__)

DEFAULT_BRANCH: str = Settings.model_fields["branch"].default
DEFAULT_EVIDENCE_REF: str = EvidenceSettings().ref
MAX_FILE_REJECTIONS = 20
"""Per ref update, at most this many rejections name a file; the rest are counted in one more line."""

_OID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
EVIDENCE_REFS = "refs/heads/stella/"
MAX_EVIDENCE_FILE = 16 << 20
"""The largest file an evidence branch takes (a statement, bundle or lock is a few KiB)."""
"""Every ref under this prefix is guarded as evidence: append-only, fast-forward only, verified."""
APPEND_ONLY = IMMUTABLE
_HEX = r"[0-9a-f]{64}"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_LAYOUT = re.compile(
    "|".join(
        [
            rf"evidence/{_HEX}\.(?:json|sigstore\.json|keyless\.sigstore\.json)",
            rf"inputs/{_HEX}\.json",
            rf"artifacts/{_HEX}/[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}",
            rf"releases/{_NAME}\.json",
            rf"environments/{_NAME}/stella\.version\.json",
            rf"targets/{_NAME}/{_NAME}/stella\.version\.json",
            rf"policies/{_HEX}\.json",
            rf"policy-files/{_HEX}",
            re.escape(POINTER),
        ]
    )
)
"""Every file the evidence branch may hold (DESIGN §4, §8, §9)."""
_APPEND_ONLY = ", ".join(APPEND_ONLY[:-1]) + f" and {APPEND_ONLY[-1]} are append-only"
_NEVER_CHANGES = "a release never changes: create a new release"


class RefUpdate(NamedTuple):
    """One line of a pre-receive hook's input: `old new refname` (all zeros: created / deleted)."""

    old: str
    new: str
    refname: str

    @property
    def created(self) -> bool:
        return _is_zero(self.old)

    @property
    def deleted(self) -> bool:
        return _is_zero(self.new)


@dataclass(frozen=True)
class Rejection:
    """Why one ref update may not land: the ref, the file and line (when there is one), the commit."""

    ref: str
    reason: str
    file: str | None = None
    commit: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.ref
        if self.file:
            where += f": {self.file}" + (f":{self.line}" if self.line is not None else "")
        if self.commit:
            where += f" (commit {self.commit[:12]})"
        return f"{where}: {self.reason}"

    def as_dict(self) -> dict[str, str | int | None]:
        return {
            "ref": self.ref,
            "file": self.file,
            "line": self.line,
            "commit": self.commit,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Guarded:
    """The refs the guard protects in a repository: its main branch and its evidence ref."""

    branch: str
    evidence_ref: str

    @property
    def branch_ref(self) -> str:
        return f"refs/heads/{self.branch}"


def _is_zero(oid: str) -> bool:
    return set(oid) == {"0"}


def parse_updates(text: str) -> list[RefUpdate]:
    """The ref updates of git's pre-receive input; raise InvalidInput naming a malformed line."""
    updates = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not _OID.match(parts[0]) or not _OID.match(parts[1]):
            raise InvalidInput(f"stdin line {number}: expected `<old-oid> <new-oid> <refname>`, got {line!r}")
        updates.append(RefUpdate(parts[0], parts[1], parts[2]))
    return updates


def open_repository(path: str | os.PathLike[str], environ: Mapping[str, str]) -> Repo:
    """Open the receiving repository so that the pushed objects are readable.

    While a pre-receive hook runs, git keeps the pushed objects in a quarantine directory it names in
    `GIT_OBJECT_DIRECTORY` (and the repository's own in `GIT_ALTERNATE_OBJECT_DIRECTORIES`); libgit2
    does not read those variables, so they are added here as alternates.
    """
    repo = Repo(path)
    own = (repo.path / "objects").resolve()
    dirs = [environ.get("GIT_OBJECT_DIRECTORY", "")]
    dirs += environ.get("GIT_ALTERNATE_OBJECT_DIRECTORIES", "").split(os.pathsep)
    for directory in dict.fromkeys(d for d in dirs if d):
        full = Path(directory).resolve()
        if full != own and full.is_dir():
            try:
                repo.git.odb.add_disk_alternate(str(full))
            except pygit2.GitError as exc:
                raise InvalidInput(f"{full}: cannot read the pushed objects: {exc}") from exc
    return repo


def guarded_refs(repo: Repo, updates: Sequence[RefUpdate] = ()) -> Guarded:
    """The main branch (`branch:` in `stella.yaml` at HEAD) and the evidence ref: where the policy chain
    is (`loop.evidence_ref`), so that an unratified `evidence.ref` on the main branch moves nothing.

    Both are read as they are before the push: a push cannot move the guard off the refs it updates.
    Without a `stella.yaml` (or with an invalid one), the defaults are guarded. Every other
    `refs/heads/stella/*` ref is guarded as evidence too.
    """
    head = _resolve(repo, "HEAD")
    at_head = _settings(repo, head)
    branch = at_head.branch if at_head else DEFAULT_BRANCH
    branch_ref = f"refs/heads/{branch}"
    commit = _resolve(repo, branch_ref)
    if commit is None:
        commit = next((u.new for u in updates if u.refname == branch_ref and not u.deleted), None)
    settings = at_head if commit == head else _settings(repo, commit)
    if settings is None:
        return Guarded(branch, DEFAULT_EVIDENCE_REF)
    return Guarded(branch, evidence_ref(repo, settings))


def check_updates(repo: Repo, updates: Sequence[RefUpdate]) -> list[Rejection]:
    """Every reason the push of `updates` must be refused; empty when it may land."""
    guarded = guarded_refs(repo, updates)
    rejections: list[Rejection] = []
    for update in updates:
        try:
            if update.refname == guarded.evidence_ref or update.refname.startswith(EVIDENCE_REFS):
                rejections += _check_evidence(repo, update, guarded)
            elif update.refname == guarded.branch_ref:
                rejections += _check_branch(repo, update, _evidence_trees(repo, guarded, updates))
        except (StellaError, pygit2.GitError, KeyError, ValueError) as exc:
            text = exc.diagnostics() if isinstance(exc, StellaError) else f"{type(exc).__name__}: {exc}"
            rejections.append(
                Rejection(update.refname, f"cannot check this update: {' '.join(text.split())}")
            )
    return rejections


# --- the evidence ref ----------------------------------------------------------------------------


def _check_evidence(repo: Repo, update: RefUpdate, guarded: Guarded) -> list[Rejection]:
    ref = update.refname
    if update.deleted:
        reason = "the evidence ref cannot be deleted; it only moves forward"
        return [Rejection(ref, reason, commit=update.old)]
    new = _commit(repo, update.new)
    walker = repo.git.walk(new.id, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE)
    if not update.created:
        old = _commit(repo, update.old)
        if old.id != new.id and not repo.git.descendant_of(new.id, old.id):
            reason = f"not a fast-forward of {update.old[:12]}; the evidence ref only moves forward"
            return [Rejection(ref, reason, commit=update.new)]
        walker.hide(old.id)
    found = list(dict.fromkeys(_rewrites(ref, walker)))
    if not found:
        old_tree = None if update.created else repo.tree(update.old)
        found = _check_added(repo, ref, old_tree, repo.tree(str(new.id)), guarded, update.new)
    if len(found) > MAX_FILE_REJECTIONS:
        rest = len(found) - MAX_FILE_REJECTIONS
        found = found[:MAX_FILE_REJECTIONS]
        found.append(Rejection(ref, f"and {rest} more changed or deleted files; {_APPEND_ONLY}"))
    return found


def _rewrites(ref: str, commits: Iterator[pygit2.Commit]) -> Iterator[Rejection]:
    """A rejection for each existing append-only file that a commit changes or deletes."""
    statuses = pygit2.enums.DeltaStatus
    for commit in commits:
        for parent in commit.parents:
            for delta in parent.tree.diff_to_tree(commit.tree).deltas:
                path = delta.old_file.path
                if delta.status == statuses.ADDED or not path.startswith(APPEND_ONLY):
                    continue
                if delta.status == statuses.DELETED:
                    what = "deleted"
                elif delta.status == statuses.MODIFIED:
                    what = "changed after it was written"
                else:
                    what = f"replaced ({delta.status.name.lower()})"
                yield Rejection(ref, f"{what}; {_APPEND_ONLY}", file=path, commit=str(commit.id))


def _check_added(
    repo: Repo, ref: str, old: GitTree | None, new: GitTree, guarded: Guarded, commit: str
) -> list[Rejection]:
    """The files the update adds: each of the layout, each statement verified under its policy."""
    rejections: list[Rejection] = []
    added = repo.added_files(old.commit if old else None, commit)
    for path in added:
        if not _LAYOUT.fullmatch(path):
            rejections.append(
                Rejection(
                    ref,
                    "not a file of the evidence branch layout (docs/evidence.md)",
                    file=path,
                    commit=commit,
                )
            )
        elif (new.size(path) or 0) > MAX_EVIDENCE_FILE:
            rejections.append(
                Rejection(
                    ref,
                    f"{new.size(path)} bytes, over the {MAX_EVIDENCE_FILE}-byte limit",
                    file=path,
                    commit=commit,
                )
            )
    if rejections:
        return rejections
    legacy = None
    if read_pointer(new) is None:  # no policy chain yet: as before, keys of the main branch
        main = _resolve(repo, guarded.branch_ref)
        legacy = trusted_keys(repo.tree(main)) if main else None
    keyring = Keyring(new, legacy=legacy) if legacy is not None else Keyring(new)
    try:
        chain = _ratified_chain(new, keyring)
    except (RecordRejected, PolicyError) as exc:
        return [Rejection(ref, f"the policy chain does not verify: {exc}", commit=commit)]
    old_chain = _ratified_chain(old, Keyring(old)) if old is not None and read_pointer(old) else []
    if not old_chain and chain and _other_chain(repo, ref):
        return [
            Rejection(
                ref,
                f"a new policy chain while {_other_chain(repo, ref)} holds one: a second genesis is a "
                "recovery that the repository's administrator does on the server, not a push",
                file=POINTER,
                commit=commit,
            )
        ]
    if old_chain and (not chain or chain[0] != old_chain[0]):
        return [
            Rejection(ref, "the push replaces the genesis of the policy chain", file=POINTER, commit=commit)
        ]
    if old_chain and [c for c in chain if c in old_chain] != old_chain:
        return [
            Rejection(ref, "the push drops ratifications from the policy chain", file=POINTER, commit=commit)
        ]
    ratified = {policy for _, policy in chain}
    keyring.genesis = chain[0][1] if chain else None
    on_chain = {record for record, _ in chain}
    for path in added:
        if not (path.startswith("evidence/") and path.endswith(".json")) or path.endswith(".sigstore.json"):
            continue
        raw = new.read(path) or b""
        hex_id = path.removeprefix("evidence/").removesuffix(".json")
        if sha256_hex(raw) != hex_id:
            rejections.append(Rejection(ref, "does not hash to its name", file=path, commit=commit))
            continue
        try:
            predicate = json.loads(raw)["predicate"]
            kind = predicate["type"]
            named = (predicate.get("policy") or {}).get("id")
        except (ValueError, KeyError, TypeError, AttributeError):
            rejections.append(Rejection(ref, "not a Stella evidence statement", file=path, commit=commit))
            continue
        if kind == RATIFICATION:
            if f"sha256:{hex_id}" not in on_chain:
                rejections.append(
                    Rejection(ref, "a ratification that is not on the policy chain", file=path, commit=commit)
                )
            continue  # verified with the chain
        if named is None and chain:
            rejections.append(
                Rejection(ref, "names no policy, but the branch has a policy chain", file=path, commit=commit)
            )
            continue
        if named is not None and named not in ratified:
            rejections.append(
                Rejection(ref, f"names policy {named}, which is not ratified", file=path, commit=commit)
            )
            continue
        if named is not None and named != chain[-1][1]:
            rejections.append(
                Rejection(
                    ref,
                    f"made under policy {named}, not the policy in force ({chain[-1][1]}): a new record "
                    "is made under the latest ratified policy (an old policy's keys sign nothing new)",
                    file=path,
                    commit=commit,
                )
            )
            continue
        bundle = new.read(path.removesuffix(".json") + ".sigstore.json")
        try:
            keyring.verify(raw, bundle, source=path)
        except RecordRejected as exc:
            rejections.append(Rejection(ref, str(exc).removeprefix(f"{path}: "), file=path, commit=commit))
    return rejections


def _other_chain(repo: Repo, ref: str) -> str | None:
    """Another `refs/heads/stella/*` ref that already holds a policy chain, if any."""
    for other in repo.refs(EVIDENCE_REFS):
        head = None if other == ref else _resolve(repo, other)
        if head is not None and read_pointer(repo.tree(head)) is not None:
            return other
    return None


def _ratified_chain(tree: GitTree | None, keyring: Keyring) -> list[tuple[str, str]]:
    """(record id, policy id) of each ratification from the genesis to the one the policy pointer
    names, each verified with the keys of the policy before it. Empty without a pointer."""
    if tree is None:
        return []
    pointer = read_pointer(tree)
    if pointer is None:
        return []
    chain: list[tuple[str, str]] = []
    current = pointer.get("record")
    seen: set[str] = set()
    while isinstance(current, str) and current not in seen:
        seen.add(current)
        path = f"evidence/{current.removeprefix('sha256:')}.json"
        raw = tree.read(path)
        if raw is None:
            raise PolicyError(f"{path}: the ratification the policy pointer leads to is missing")
        predicate = json.loads(raw)["predicate"]
        if predicate.get("type") != RATIFICATION:
            raise PolicyError(f"{path}: not a ratification")
        keyring.verify(raw, tree.read(path.removesuffix(".json") + ".sigstore.json"), source=path)
        chain.append((current, predicate["policy"]["id"]))
        current = predicate.get("previous")
    chain.reverse()
    if chain and pointer.get("id") != chain[-1][1]:
        raise PolicyError(f"{POINTER}: names policy {pointer.get('id')}, not the one its record ratified")
    for (_, before), (record, _) in itertools.pairwise(chain):
        raw = tree.read(f"evidence/{record.removeprefix('sha256:')}.json") or b"{}"
        if json.loads(raw)["predicate"]["policy"].get("previous") != before:
            raise PolicyError(f"{record}: names a previous policy that the chain did not ratify before it")
    return chain


# --- the main branch: releases -------------------------------------------------------------------


def _check_branch(repo: Repo, update: RefUpdate, evidence: Sequence[GitTree]) -> list[Rejection]:
    ref = update.refname
    old = None if update.created else repo.tree(str(_commit(repo, update.old).id))
    new = None if update.deleted else repo.tree(str(_commit(repo, update.new).id))
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
    heads = [_resolve(repo, guarded.evidence_ref)]
    heads += [
        str(_commit(repo, u.new).id) for u in updates if u.refname == guarded.evidence_ref and not u.deleted
    ]
    return [repo.tree(head) for head in dict.fromkeys(heads) if head]


# --- reading -------------------------------------------------------------------------------------


def _commit(repo: Repo, oid: str) -> pygit2.Commit:
    try:
        obj = repo.git.get(oid)
    except (ValueError, pygit2.GitError) as exc:
        raise InvalidInput(f"{oid}: not an object id") from exc
    if obj is None:
        raise InvalidInput(f"{oid}: no such object in this repository")
    try:
        commit = obj.peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise InvalidInput(f"{oid} is a {obj.type_str}, not a commit") from exc
    if not isinstance(commit, pygit2.Commit):
        raise InvalidInput(f"{oid} is a {obj.type_str}, not a commit")
    return commit


def _resolve(repo: Repo, ref: str) -> str | None:
    """The commit a ref points to; None when it does not exist (or, for HEAD, is unborn)."""
    try:
        return repo.resolve_ref(ref)
    except (KeyError, ValueError, pygit2.GitError):
        return None


def _settings(repo: Repo, commit: str | None) -> Settings | None:
    if commit is None:
        return None
    tree = repo.tree(commit)
    if tree.size(SETTINGS_FILE) is None:
        return None
    try:
        return load_settings(tree)
    except ValidationFailed as exc:
        log.warning("%s at %s is invalid, guarding the default refs: %s", SETTINGS_FILE, commit[:12], exc)
        return None


# --- installing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    """Where the hook was installed, what it runs, and whether the file was (re)written."""

    path: Path
    command: tuple[str, ...]
    changed: bool


def hook_script(command: Sequence[str]) -> str:
    """The `hooks/pre-receive` script that runs `command` (which reads the update lines on stdin)."""
    return (
        "#!/bin/sh\n"
        "# Installed by `stella hook install`: refuses pushes that rewrite the evidence ref or change a\n"
        "# release's digests (docs/hook.md). git passes the ref updates on stdin and GIT_DIR.\n"
        f"exec {shlex.join(command)}\n"
    )


def install(repository: Path, command: Sequence[str], *, force: bool = False) -> Installed:
    """Write `hooks/pre-receive` running `command` in the Git repository at `repository`.

    An existing hook with other content is replaced only with `force`; the same hook is left alone.
    """
    repo = Repo(repository)
    given = repository.resolve()
    if repo.path.resolve() not in (given, (given / ".git").resolve()):
        raise InvalidInput(f"{repository}: not a Git repository (found {repo.path} above it)")
    target = repo.path / "hooks" / "pre-receive"
    script = hook_script(command)
    if target.exists() or target.is_symlink():
        current = target.read_bytes() if target.is_file() else None
        if current == script.encode() and os.access(target, os.X_OK):
            return Installed(target, tuple(command), changed=False)
        if not force:
            raise InvalidInput(
                f"{target} already exists and is not this hook: review it, then pass --force to replace it"
            )
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_name(".pre-receive.stella-tmp")
    tmp.write_text(script)
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return Installed(target, tuple(command), changed=True)
