"""Keyless trust material: `trust/keyless.yaml` and the trusted root it pins, read from a tree or
held in memory, and the verifier a signer plugin offers for it.

Verifies no bundle itself (the plugin's verifier does). Reads only what it is given; never writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any, cast

from ..discover import discover
from ..protocols import BundleVerifier
from ..repo import Repo
from .unpack import _unsafe


class _MemoryFiles:
    """A `FileSource` over a few files held in memory (the keyless trust material)."""

    def __init__(self, files: Sequence[tuple[str, bytes]]) -> None:
        self._files = dict(files)

    def read(self, path: str) -> bytes | None:
        return self._files.get(path)

    def listdir(self, path: str) -> list[str]:
        prefix = f"{path}/" if path else ""
        return sorted({p[len(prefix) :].split("/")[0] for p in self._files if p.startswith(prefix)})


def _keyless_verifier(files: tuple[tuple[str, bytes], ...]) -> BundleVerifier | None:
    """A verifier of keyless bundles from a signer plugin that offers one, or None (no policy/plugin)."""
    if not files:
        return None
    plugins = discover(kinds=("signers",))
    for name in sorted(plugins.signers):
        opener = getattr(plugins.signers[name], "open_verifier", None)
        if callable(opener):
            verifier = opener(_MemoryFiles(files))
            if verifier is not None:
                return cast(BundleVerifier, verifier)
    return None


def load_keyless(repo: Repo, branch: str) -> tuple[tuple[str, bytes], ...]:
    """`trust/keyless.yaml` and the trusted root it pins, from the branch head (empty when absent)."""
    commit = repo.resolve_ref(f"refs/heads/{branch}")
    if commit is None:
        return ()
    return keyless_files(repo.tree(commit))


def keyless_files(files: Any) -> tuple[tuple[str, bytes], ...]:
    """`trust/keyless.yaml` and the trusted root it pins, from a `FileSource` (empty when absent)."""
    policy = files.read("trust/keyless.yaml")
    if policy is None:
        return ()
    out = [("trust/keyless.yaml", policy)]
    root = _trusted_root_path(policy)
    data = files.read(root) if root else None
    if root and data is not None:
        out.append((root, data))
    return tuple(out)


def _trusted_root_path(keyless: bytes | None) -> str | None:
    """The trusted root `trust/keyless.yaml` pins, when it names a plain path inside the repository."""
    if keyless is None:
        return None
    import yaml

    try:
        doc = yaml.safe_load(keyless)
    except yaml.YAMLError:
        return None
    path = doc.get("trustedRoot") if isinstance(doc, dict) else None
    if not isinstance(path, str) or _unsafe(path):
        return None
    return str(PurePosixPath(path))
