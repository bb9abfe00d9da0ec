"""The branch's history: no file under the immutable directories was changed or deleted by any
commit (`history`), and the ref only ever moved by fast-forward, where a reflog exists (`reflog`).

Runs `git log` in a process of its own and reads the reflog; never writes.
"""

from __future__ import annotations

import os
import subprocess
from typing import ClassVar

import pygit2

from ..errors import Transient
from ..repo import Repo
from .findings import Finding
from .layout import IMMUTABLE

_ZERO = "0" * 40


class _History:
    """No file under IMMUTABLE changed or deleted by any commit of the branch (against each parent).

    `git log` does the diffs, listing only deletions, modifications and type changes under those
    directories: libgit2 re-reads each commit's large directory trees from their delta chains and is
    many times slower at this. It runs in its own process while the records are checked.
    """

    _MESSAGES: ClassVar[dict[bytes, str]] = {
        b"D": "deleted from the evidence branch",
        b"M": "changed after it was written",
        b"T": "changed type after it was written",
    }

    def __init__(self, repo: Repo, head: str) -> None:
        argv = ["git", f"--git-dir={repo.path}", "log", "-z", "-m", "--full-history", "--no-renames"]
        argv += ["--raw", "--no-abbrev", "--diff-filter=DMT", "--format=%x01%H", head, "--", *IMMUTABLE]
        env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        try:
            self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
            )
        except OSError as exc:
            raise Transient(f"cannot run git to check the branch history: {exc}") from exc

    def findings(self) -> list[Finding]:
        assert self._process is not None
        out, err = self._process.communicate()
        code, self._process = self._process.returncode, None
        if code != 0:
            raise Transient(
                f"git log failed while checking the branch history: {err.decode(errors='replace')}"
            )
        found = []
        for chunk in out.split(b"\x01")[1:]:
            commit, _, rest = chunk.partition(b"\0")
            fields = rest.lstrip(b"\n").split(b"\0")
            for meta, path in zip(fields[0::2], fields[1::2], strict=False):
                status = meta.rsplit(b" ", 1)[-1][:1]
                if meta.startswith(b":") and status in self._MESSAGES:
                    name = path.decode(errors="replace")
                    found.append(Finding(name, self._MESSAGES[status], commit.decode(), "history"))
        return found

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.communicate()
            self._process = None


def _check_reflog(repo: Repo, ref: str) -> list[Finding]:
    try:
        entries = list(repo.git.lookup_reference(ref).log())
    except (KeyError, ValueError, pygit2.GitError):
        entries = []
    found = []
    for entry in entries:
        old, new = str(entry.oid_old), str(entry.oid_new)
        if old in (_ZERO, new):
            continue
        if not repo.is_ancestor(old, new):
            found.append(
                Finding(
                    ref,
                    f"moved from {old[:12]} to {new[:12]}, which is not a fast-forward (history rewritten)",
                    check="reflog",
                )
            )
    return found
