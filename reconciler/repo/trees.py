"""The files of a commit, as a `FileSource` read through pygit2: what the loaders and gates read.

Read-only: nothing here writes. (A directory on disk is `worktree.WorkTree`.)
"""

from __future__ import annotations

import pygit2


class GitTree:
    """A `FileSource` over one Git tree (a commit's files), read through pygit2."""

    def __init__(self, repo: pygit2.Repository, tree: pygit2.Tree, commit: str | None = None) -> None:
        self._repo = repo
        self._tree = tree
        self.commit = commit
        self._dirs: dict[str, pygit2.Tree | None] = {"": tree}

    def _dir(self, path: str) -> pygit2.Tree | None:
        """The tree object of directory `path`, parsed once (a path lookup per file would re-read every
        directory on the way, which is slow for directories of thousands of records)."""
        if path not in self._dirs:
            parent, _, name = path.rpartition("/")
            above = self._dir(parent)
            found = None
            if above is not None:
                try:
                    entry = above[name]
                except KeyError:
                    entry = None
                if entry is not None and entry.type == pygit2.enums.ObjectType.TREE:
                    obj = self._repo[entry.id]
                    found = obj if isinstance(obj, pygit2.Tree) else None
            self._dirs[path] = found
        return self._dirs[path]

    def _entry(self, path: str) -> pygit2.Object | None:
        if not path:
            return self._tree
        parent, _, name = path.rpartition("/")
        directory = self._dir(parent)
        if directory is None:
            return None
        try:
            return directory[name]
        except KeyError:
            return None

    def _blob(self, path: str) -> pygit2.Blob | None:
        obj = self._entry(path)
        if obj is None or obj.type != pygit2.enums.ObjectType.BLOB:
            return None
        blob = self._repo[obj.id]
        return blob if isinstance(blob, pygit2.Blob) else None

    def read(self, path: str) -> bytes | None:
        blob = self._blob(path)
        return None if blob is None else blob.data

    def size(self, path: str) -> int | None:
        blob = self._blob(path)
        return None if blob is None else blob.size

    def listdir(self, path: str) -> list[str]:
        obj = self._entry(path)
        if obj is None or obj.type != pygit2.enums.ObjectType.TREE:
            return []
        tree = self._repo[obj.id]
        return sorted(e.name or "" for e in tree) if isinstance(tree, pygit2.Tree) else []

    def isdir(self, path: str) -> bool:
        obj = self._entry(path)
        return obj is not None and obj.type == pygit2.enums.ObjectType.TREE

    def describe(self) -> str:
        return f"commit {self.commit[:12]}" if self.commit else "tree"
