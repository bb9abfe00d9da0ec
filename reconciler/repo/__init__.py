"""Git access: the only package that uses pygit2.

Reads a repository's files at a commit (`trees.GitTree`, or `worktree.WorkTree` for a directory on disk),
and writes commits to a ref by compare-and-swap (`repository.Repo`). pygit2 errors are translated into
`Transient` (could not read or update) or `InvalidInput` (no such repository, ref or file); nothing
outside this package sees a pygit2 type except through `Repo`, which wraps it.

The names are loaded on first use (PEP 562): a command that only reads a work tree never imports pygit2.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .repository import BOT, Author, CommitInfo, RaceLost, Repo
    from .trees import GitTree
    from .worktree import MAX_FILE_BYTES, WorkTree

_HOMES = {
    "BOT": "repository",
    "Author": "repository",
    "CommitInfo": "repository",
    "RaceLost": "repository",
    "Repo": "repository",
    "GitTree": "trees",
    "MAX_FILE_BYTES": "worktree",
    "WorkTree": "worktree",
}

__all__ = ["BOT", "MAX_FILE_BYTES", "Author", "CommitInfo", "GitTree", "RaceLost", "Repo", "WorkTree"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
