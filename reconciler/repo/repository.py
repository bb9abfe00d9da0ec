"""A Git repository: refs, commits and their signatures, history walks, and commits written to a ref
by compare-and-swap under a lock file that survives a killed writer.

pygit2 errors are translated here into `Transient` (could not read or update) or `InvalidInput` (no such
repository, ref or file).
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from ..errors import InvalidInput, Transient
from .trees import GitTree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Author:
    name: str
    email: str


BOT = Author("Stella reconciler", "reconciler@stella.invalid")

STALE_LOCK_SECONDS = 10.0
OWNER_SLACK_SECONDS = 5.0
"""How soon after writing `stella-ref.owner` a Stella process makes the ref lock (milliseconds, in
practice): a lock made later than this is not that process's."""
"""A ref `.lock` file older than this, found while holding Stella's own lock, was left by a killed
process (git writes and renames it within milliseconds) and is removed."""


@dataclass(frozen=True)
class CommitInfo:
    """One commit as identity checks need it: who, when, and its signature over which bytes."""

    id: str
    author_name: str
    author_email: str
    time: datetime
    signature: bytes | None
    signed_payload: bytes | None
    committed: datetime | None = None
    """The committer time: when the signature was made, as `git verify-commit` takes it."""


class Repo:
    """A Git repository: read trees at commits, write commits by compare-and-swap."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            found = pygit2.discover_repository(str(path))
            if found is None:
                raise InvalidInput(f"{path}: not a Git repository (run `git init` or pass --repo)")
            self.git = pygit2.Repository(found)
        except pygit2.GitError as exc:
            raise InvalidInput(f"{path}: cannot open Git repository: {exc}") from exc
        self.path = Path(self.git.path)

    @property
    def workdir(self) -> Path | None:
        return Path(self.git.workdir) if self.git.workdir else None

    def resolve_ref(self, name: str) -> str | None:
        """The commit id a ref or revision names, or None when it does not exist (or is unborn)."""
        for candidate in (name, f"refs/heads/{name}"):
            try:
                ref = self.git.references.get(candidate)
                if ref is not None:
                    return str(ref.peel(pygit2.Commit).id)
            except (pygit2.GitError, ValueError, KeyError):
                continue
        try:
            return str(self.git.revparse_single(name).peel(pygit2.Commit).id)
        except (KeyError, ValueError, pygit2.GitError):
            return None

    def refs(self, prefix: str) -> list[str]:
        """The names of the references under `prefix` (e.g. `refs/heads/stella/`)."""
        return sorted(name for name in self.git.references if name.startswith(prefix))

    def tree(self, commit_id: str) -> GitTree:
        try:
            commit = self.git[commit_id].peel(pygit2.Commit)
        except (KeyError, ValueError) as exc:
            raise InvalidInput(f"no such commit {commit_id}") from exc
        return GitTree(self.git, commit.tree, str(commit.id))

    def commit_info(self, commit_id: str) -> CommitInfo:
        commit = self.git[commit_id].peel(pygit2.Commit)
        signature, payload = commit.gpg_signature
        return CommitInfo(
            id=str(commit.id),
            author_name=commit.author.name,
            author_email=commit.author.email,
            time=datetime.fromtimestamp(commit.author.time, UTC),
            signature=signature,
            signed_payload=payload,
            committed=datetime.fromtimestamp(commit.committer.time, UTC),
        )

    def last_writer(self, commit_id: str, path: str) -> CommitInfo | None:
        """The commit that gave `path` the content it has at `commit_id` (None: no such file).

        Follows history like `git log` does: when a parent has the same content, the change came from
        that parent's side (so a merge commit is not taken for the author of a file it merged).
        """
        commit = self.git[commit_id].peel(pygit2.Commit)
        blob = _entry_id(commit.tree, path)
        if blob is None:
            return None
        while True:
            same = [p for p in commit.parents if _entry_id(p.tree, path) == blob]
            if not same:
                return self.commit_info(str(commit.id))
            commit = same[0]

    def user(self) -> Author:
        """The committer configured for this repository (git config user.name / user.email)."""
        try:
            sig = self.git.default_signature
        except (KeyError, pygit2.GitError) as exc:
            raise InvalidInput(
                "no Git identity configured: set `git config user.name` and `git config user.email`"
            ) from exc
        return Author(sig.name, sig.email)

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """True when `ancestor` is `descendant` or one of its ancestors."""
        if ancestor == descendant:
            return True
        try:
            return bool(self.git.descendant_of(pygit2.Oid(hex=descendant), pygit2.Oid(hex=ancestor)))
        except (KeyError, ValueError, pygit2.GitError):
            return False

    def first_parent_since(self, head: str, since: datetime) -> Iterator[tuple[str, str | None]]:
        """(commit, first parent) along the first-parent line from `head`, while commits are at or
        after `since` (committer time)."""
        commit = self.git[head].peel(pygit2.Commit)
        while datetime.fromtimestamp(commit.commit_time, UTC) >= since:
            parent = commit.parents[0] if commit.parents else None
            yield str(commit.id), str(parent.id) if parent else None
            if parent is None:
                return
            commit = parent

    def changed_paths(self, base: str, head: str) -> list[str]:
        """Paths added, changed or deleted between two commits (both sides of a rename)."""
        old = self.git[base].peel(pygit2.Commit).tree
        new = self.git[head].peel(pygit2.Commit).tree
        paths = set()
        for delta in old.diff_to_tree(new).deltas:
            paths.add(delta.old_file.path)
            paths.add(delta.new_file.path)
        return sorted(paths)

    def added_paths(self, base: str, head: str, prefix: str) -> list[str]:
        """Files under `prefix` present at `head` but not at `base` (prefix: a directory, with `/`)."""
        old = self.git[base].peel(pygit2.Commit).tree
        new = self.git[head].peel(pygit2.Commit).tree
        directory = prefix.rstrip("/")
        try:
            old_dir = old[directory]
        except KeyError:
            old_dir = None
        try:
            new_dir = new[directory]
        except KeyError:
            return []
        if old_dir is None:
            return sorted(f"{directory}/{e.name}" for e in self.git[new_dir.id].peel(pygit2.Tree))
        diff = self.git[old_dir.id].peel(pygit2.Tree).diff_to_tree(self.git[new_dir.id].peel(pygit2.Tree))
        return sorted(
            f"{directory}/{d.new_file.path}"
            for d in diff.deltas
            if d.status == pygit2.enums.DeltaStatus.ADDED
        )

    def governed_changes(
        self, head: str, since: str | None, names: tuple[str, ...], *, limit: int = 10000
    ) -> list[str]:
        """Commits reachable from `head` and not from `since` that changed any top-level entry in
        `names` (a file or directory). A merge whose entries equal one parent's brought that side's
        change and made none of its own; a root commit changed what it holds. At most `limit` commits
        are walked (InvalidInput past it)."""

        def entries(commit: pygit2.Commit) -> tuple[pygit2.Oid | None, ...]:
            return tuple(_entry_id(commit.tree, name) for name in names)

        walker = self.git.walk(self.git[head].peel(pygit2.Commit).id, pygit2.enums.SortMode.TOPOLOGICAL)
        if since is not None:
            with suppress(KeyError, ValueError, pygit2.GitError):
                walker.hide(self.git[since].peel(pygit2.Commit).id)
        changed = []
        for count, commit in enumerate(walker):
            if count >= limit:
                raise InvalidInput(
                    f"more than {limit} commits since the ratified policy: cannot find its authors"
                )
            mine = entries(commit)
            if not commit.parents:
                if any(e is not None for e in mine):
                    changed.append(str(commit.id))
            elif all(entries(parent) != mine for parent in commit.parents):
                changed.append(str(commit.id))
        return changed

    def first_added(self, head: str, paths: list[str]) -> str | None:
        """Which of `paths` appeared first in the history of `head` (oldest commit first)."""
        order = pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE
        for commit in self.git.walk(self.git[head].peel(pygit2.Commit).id, order):
            present = [p for p in paths if _entry_id(commit.tree, p) is not None]
            if present:
                return sorted(present)[0]
        return None

    def added_files(self, base: str | None, head: str) -> list[str]:
        """Every file path present at `head` and not at `base` (None: every file at `head`)."""
        new = self.git[head].peel(pygit2.Commit).tree
        if base is None:
            out: list[str] = []

            def walk(tree: pygit2.Tree, prefix: str) -> None:
                for entry in tree:
                    obj = self.git[entry.id]
                    if isinstance(obj, pygit2.Tree):
                        walk(obj, f"{prefix}{entry.name}/")
                    else:
                        out.append(f"{prefix}{entry.name}")

            walk(new, "")
            return sorted(out)
        old = self.git[base].peel(pygit2.Commit).tree
        return sorted(
            d.new_file.path
            for d in old.diff_to_tree(new).deltas
            if d.status == pygit2.enums.DeltaStatus.ADDED
        )

    def writers(self, commit_id: str, path: str, limit: int = 10) -> Iterator[CommitInfo]:
        """The commits that changed `path`, newest first (as `last_writer`, then further back)."""
        current: str | None = commit_id
        for _ in range(limit):
            if current is None:
                return
            info = self.last_writer(current, path)
            if info is None:
                return
            yield info
            commit = self.git[info.id].peel(pygit2.Commit)
            current = next((str(p.id) for p in commit.parents if _entry_id(p.tree, path) is not None), None)

    def commit_files(
        self,
        ref: str,
        expected: str | None,
        files: Mapping[str, bytes],
        message: str,
        author: Author = BOT,
        *,
        parent: str | None = None,
        sign: bool = False,
    ) -> str:
        """Commit `files` (path -> bytes) on top of `parent` and move `ref` to it, atomically.

        `expected` is the commit the caller read `ref` at (None: the ref must not exist yet);
        `parent` defaults to it. Raises `RaceLost` when the ref moved meanwhile; nothing is written to
        the ref in that case. `sign`: let `git commit-tree -S` make and sign the commit, exactly as
        `git commit -S` would with the user's configuration (e.g. `gpg.format=ssh`).
        """
        parent = parent if parent is not None else expected
        sig = pygit2.Signature(author.name, author.email)
        try:
            index = pygit2.Index()
            parents: list[pygit2.Oid] = []
            if parent is not None:
                base = self.git[parent].peel(pygit2.Commit)
                index.read_tree(base.tree)
                parents.append(base.id)
            for path, data in sorted(files.items()):
                blob = self.git.create_blob(data)
                index.add(pygit2.IndexEntry(path, blob, pygit2.enums.FileMode.BLOB))
            tree = index.write_tree(self.git)
            if sign:
                oid = self._signed_commit(str(tree), [str(p) for p in parents], message)
            else:
                oid = str(self.git.create_commit(None, sig, sig, message, tree, parents))
        except pygit2.GitError as exc:
            raise Transient(f"{self.path}: cannot write commit: {exc}") from exc
        self.move_ref(ref, expected, oid, message)
        return oid

    def signing_configured(self) -> bool:
        """True when the user's Git configuration signs commits with an SSH key."""
        config = self.git.config
        try:
            return config["gpg.format"] == "ssh" and bool(config["user.signingkey"])
        except KeyError:
            return False

    def _signed_commit(self, tree: str, parents: list[str], message: str) -> str:
        argv = ["git", f"--git-dir={self.path}", "commit-tree", "-S", tree]
        for parent in parents:
            argv += ["-p", parent]
        done = subprocess.run(argv, input=message, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise InvalidInput(f"could not sign the commit (git commit-tree -S): {done.stderr.strip()}")
        return done.stdout.strip()

    @contextmanager
    def _ref_lock(self, ref: str) -> Iterator[None]:
        """Serialise Stella's ref updates in this repository, and clear a ref lock a killed one left.

        Under Stella's own file lock no other Stella process is updating a ref. `stella-ref.owner` names
        the process that holds it, and is removed on every way out (a lost race, an error); only a
        process killed while holding it leaves it. A `<ref>.lock` made within `OWNER_SLACK_SECONDS` of
        such a leftover owner file was that process's, and is removed at once; any other `.lock` (a
        concurrent git, or one made later) is removed only once it is `STALE_LOCK_SECONDS` old.
        """
        owner = self.path / "stella-ref.owner"
        with open(self.path / "stella-ref.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                stale = self.path / f"{ref}.lock"
                if stale.exists():
                    age = time.time() - stale.stat().st_mtime
                    if not _left_by_killed_owner(owner, stale) and age < STALE_LOCK_SECONDS:
                        raise Transient(
                            f"{stale}: {ref} is locked by another process (for {age:.1f}s); try again"
                        )
                    log.warning("removing %s, left by a process that was killed", stale)
                    stale.unlink(missing_ok=True)
                owner.write_text(f"{os.getpid()}\n")
                try:
                    yield
                finally:
                    owner.unlink(missing_ok=True)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def move_ref(self, ref: str, expected: str | None, new: str, message: str) -> None:
        """Compare-and-swap `ref` from `expected` to `new`."""
        with self._ref_lock(ref):
            self._move_ref(ref, expected, new, message)

    def _move_ref(self, ref: str, expected: str | None, new: str, message: str) -> None:
        try:
            if expected is None:
                try:
                    self.git.references.create(ref, pygit2.Oid(hex=new), force=False)
                except ValueError as exc:  # pygit2 raises ValueError/AlreadyExistsError
                    raise RaceLost(ref) from exc
                return
            current = self.git.lookup_reference(ref)
            if str(current.target) != expected:
                raise RaceLost(ref)
            current.set_target(pygit2.Oid(hex=new), message)
        except pygit2.AlreadyExistsError as exc:
            raise RaceLost(ref) from exc
        except KeyError as exc:
            raise RaceLost(ref) from exc
        except pygit2.GitError as exc:
            text = str(exc)
            if "does not match" in text or "old reference value" in text:
                raise RaceLost(ref) from exc
            raise Transient(f"{self.path}: cannot update {ref}: {text}") from exc


def _left_by_killed_owner(owner: Path, lock: Path) -> bool:
    """True when `owner` names a process that is no longer running and `lock` was made while that
    process held Stella's lock (within `OWNER_SLACK_SECONDS` of the owner file)."""
    try:
        pid = int(owner.read_text().strip())
        made = owner.stat().st_mtime
        locked = lock.stat().st_mtime
    except (OSError, ValueError):
        return False
    if abs(locked - made) > OWNER_SLACK_SECONDS:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _entry_id(tree: pygit2.Tree, path: str) -> pygit2.Oid | None:
    try:
        return tree[path].id
    except KeyError:
        return None


class RaceLost(Transient):
    """Another writer moved the ref between our read and our write: re-read and re-decide."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"{ref} moved while this pass ran; it will be re-read")
