"""Which ref updates of a push the guard checks, and the dispatch to the checks.

`parse_updates` reads git's pre-receive input, `open_repository` opens the receiving repository with
the pushed (quarantined) objects readable, `guarded_refs` says which refs are guarded, and
`check_updates` sends each guarded update to its check: `hook.evidence` for an evidence ref,
`hook.releases` for the main branch. Those checks (and the verifiers behind them) are imported only
when a push touches a guarded ref, so that a push the guard does not care about is let through fast.
Reads the repository; never writes to it; never prints.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pygit2

from ..chain import evidence_ref
from ..errors import InvalidInput, StellaError, ValidationFailed
from ..manifests import SETTINGS_FILE, load_settings
from ..models import EvidenceSettings, Settings
from ..repo import Repo

log = logging.getLogger(__package__)  # `reconciler.hook`, the name its warnings always had

DEFAULT_BRANCH: str = Settings.model_fields["branch"].default
DEFAULT_EVIDENCE_REF: str = EvidenceSettings().ref
EVIDENCE_REFS = "refs/heads/stella/"
"""Every ref under this prefix is guarded as evidence: append-only, fast-forward only, verified."""

_OID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


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
    is (`chain.evidence_ref`), so that an unratified `evidence.ref` on the main branch moves nothing.

    Both are read as they are before the push: a push cannot move the guard off the refs it updates.
    Without a `stella.yaml` (or with an invalid one), the defaults are guarded. Every other
    `refs/heads/stella/*` ref is guarded as evidence too.
    """
    head = ref_target(repo, "HEAD")
    at_head = _settings(repo, head)
    branch = at_head.branch if at_head else DEFAULT_BRANCH
    branch_ref = f"refs/heads/{branch}"
    commit = ref_target(repo, branch_ref)
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
                from .evidence import check_evidence

                rejections += check_evidence(repo, update, guarded)
            elif update.refname == guarded.branch_ref:
                from .releases import check_branch

                rejections += check_branch(repo, update, guarded, updates)
        except (StellaError, pygit2.GitError, KeyError, ValueError) as exc:
            text = exc.diagnostics() if isinstance(exc, StellaError) else f"{type(exc).__name__}: {exc}"
            rejections.append(
                Rejection(update.refname, f"cannot check this update: {' '.join(text.split())}")
            )
    return rejections


# --- reading -------------------------------------------------------------------------------------


def peel_commit(repo: Repo, oid: str) -> pygit2.Commit:
    """The commit `oid` names (a tag is peeled); InvalidInput when there is none."""
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


def ref_target(repo: Repo, ref: str) -> str | None:
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
