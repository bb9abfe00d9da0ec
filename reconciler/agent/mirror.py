"""The agent's copy of the evidence branch: a bare repository under its state directory, fetched from
the source over any transport Git speaks (a path, `git://`, `http(s)://`, `ssh://`), and pushed back by
compare-and-swap.

The fetch only fast-forwards: a source whose evidence ref was rewritten (history dropped or changed) is
refused, never followed. A push that the source refuses because its ref moved is `RaceLost` (the caller
re-fetches and commits its files again on the new head); any other failure is `Transient`. Uses the
`git` command (its transports and credential helpers); reads and commits through `repo.Repo`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from ..errors import InvalidInput, Transient
from ..repo import RaceLost, Repo

GIT_TIMEOUT = float(os.environ.get("STELLA_GIT_TIMEOUT", "120"))
_RACE = ("[rejected]", "fetch first", "non-fast-forward", "stale info")
"""Git refused the push because the source's ref is no longer where the push started from."""
_MOVED_MEANWHILE = ("failed to lock", "cannot lock ref", "failed to update ref", "incorrect old value")
"""A `[remote rejected]` reason that means the ref moved while the push ran (a race, too)."""


class PushRefused(InvalidInput):
    """The source refused the commit itself (its pre-receive hook declined it, or the ref is checked out
    there): pushing it again will not help."""


class Mirror:
    """The evidence ref of `url`, mirrored in `<state dir>/evidence.git`."""

    def __init__(self, state_dir: Path, url: str, ref: str) -> None:
        self.path = state_dir / "evidence.git"
        self.url = url
        self.ref = ref

    def _git(self, *argv: str, what: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        try:
            return subprocess.run(
                ["git", "--git-dir", str(self.path), *argv],
                capture_output=True,
                text=True,
                env=env,
                timeout=GIT_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            raise Transient(f"{what} {self.url}: no answer within {GIT_TIMEOUT:g}s") from exc
        except OSError as exc:
            raise Transient(f"{what} {self.url}: cannot run git: {exc}") from exc

    def clear_stale_locks(self) -> None:
        """Remove the lock files a killed run left in the mirror. Only call it holding the state
        directory's lock (`agent.lock`): then no other process writes the mirror, and every lock is stale."""
        if not self.path.is_dir():
            return
        for lock in [*self.path.glob("*.lock"), *(self.path / "refs").rglob("*.lock")]:
            with contextlib.suppress(OSError):
                lock.unlink()

    def fetch(self) -> str | None:
        """Bring the mirror's evidence ref up to the source's; its head (None: the source has none)."""
        if not (self.path / "HEAD").exists():
            self.path.mkdir(parents=True, exist_ok=True)
            init = subprocess.run(
                ["git", "init", "--quiet", "--bare", str(self.path)], capture_output=True, text=True
            )
            if init.returncode != 0:
                raise InvalidInput(f"{self.path}: cannot make the agent's mirror: {init.stderr.strip()}")
        listed = self._git("ls-remote", "--refs", self.url, self.ref, what="reading")
        if listed.returncode != 0:
            raise Transient(f"reading {self.url}: {_last_line(listed.stderr)}")
        remote = next(
            (
                oid
                for oid, _, name in (line.partition("\t") for line in listed.stdout.splitlines())
                if name == self.ref
            ),
            None,
        )
        if remote is None:
            return None
        if Repo(self.path).resolve_ref(self.ref) == remote:
            return remote  # nothing new: no second process (the poll's common case)
        done = self._git(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            self.url,
            f"{self.ref}:{self.ref}",
            what="fetching",
        )
        if done.returncode != 0:
            if any(marker in done.stderr for marker in _RACE):
                raise InvalidInput(
                    f"{self.url}: {self.ref} was rewritten (its new head does not descend from the one this "
                    "agent verified before): refusing to follow it"
                )
            raise Transient(f"fetching {self.url}: {_last_line(done.stderr)}")
        return Repo(self.path).resolve_ref(self.ref)

    def repo(self) -> Repo:
        return Repo(self.path)

    def push(self, commit: str) -> None:
        """Move the source's evidence ref to `commit` (a descendant of what it was): `RaceLost` when
        the source's ref moved meanwhile."""
        refspec = f"{commit}:{self.ref}"
        done = self._git("push", "--quiet", "--porcelain", self.url, refspec, what="pushing to")
        if done.returncode == 0:
            return
        text = done.stdout + done.stderr
        if "[remote rejected]" in text and not any(reason in text for reason in _MOVED_MEANWHILE):
            reasons = [
                line.removeprefix("remote:").strip() for line in text.splitlines() if "rejected" in line
            ]
            raise PushRefused(f"{self.url} refused the record: {'; '.join(reasons)}")
        if any(marker in text for marker in (*_RACE, *_MOVED_MEANWHILE)):
            raise RaceLost(self.ref)
        raise Transient(f"pushing to {self.url}: {_last_line(text)}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "git failed"
