"""The files of a directory on disk, as a `FileSource`: for commands a person runs before committing.

Refuses paths that leave the directory (`..`, symlinks out). Read-only, and free of pygit2, so that
`stella validate` on a work tree does not pay for loading Git.
"""

from __future__ import annotations

from pathlib import Path

MAX_FILE_BYTES = 1 << 20
"""Files larger than this are not read by the loaders (a manifest is a few KiB)."""


class WorkTree:
    """A `FileSource` over a directory on disk; refuses paths that leave it (`..`, symlinks out)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, path: str) -> Path | None:
        full = (self.root / path).resolve()
        if full != self.root and self.root not in full.parents:
            return None
        return full

    def read(self, path: str) -> bytes | None:
        full = self._path(path)
        if full is None or not full.is_file():
            return None
        return full.read_bytes()

    def size(self, path: str) -> int | None:
        full = self._path(path)
        if full is None or not full.is_file():
            return None
        return full.stat().st_size

    def listdir(self, path: str) -> list[str]:
        full = self._path(path) if path else self.root
        if full is None or not full.is_dir():
            return []
        return sorted(p.name for p in full.iterdir())

    def isdir(self, path: str) -> bool:
        full = self._path(path)
        return bool(full and full.is_dir())

    def describe(self) -> str:
        return f"work tree {self.root}"
