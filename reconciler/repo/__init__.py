"""Git access: the only package that uses pygit2.

Reads a repository's files at a commit (`trees`: `GitTree`, or `WorkTree` for a directory on disk), and
writes commits to a ref by compare-and-swap (`repository`: `Repo`). pygit2 errors are translated into
`Transient` (could not read or update) or `InvalidInput` (no such repository, ref or file); nothing
outside this package sees a pygit2 type except through `Repo`, which wraps it.
"""

from .repository import BOT, Author, CommitInfo, RaceLost, Repo
from .trees import MAX_FILE_BYTES, GitTree, WorkTree

__all__ = ["BOT", "MAX_FILE_BYTES", "Author", "CommitInfo", "GitTree", "RaceLost", "Repo", "WorkTree"]
