"""Verifier trust material: the repository files the installed verifier plugins read, held in memory,
and the verifier a plugin offers for them (keyless bundles and witnesses, with `stella-sigstore`).

The core does not know what the files mean: each verifier plugin names its own (`TrustMaterial`), or,
if it does not say, every file under `trust/` is carried. Verifies no bundle itself (the plugin's
verifier does). Reads only what it is given; never writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

from ..discover import discover
from ..governance import ALLOWED_SIGNERS, GROUPS_FILE, KEYS_DIR
from ..protocols import BundleVerifier, FileSource, TrustFile, TrustMaterial, VerifierPlugin

if TYPE_CHECKING:
    from ..repo import Repo

TRUST_DIR = "trust"


class _MemoryFiles:
    """A `FileSource` over a few files held in memory (the trust material)."""

    def __init__(self, files: Sequence[tuple[str, bytes]]) -> None:
        self._files = dict(files)

    def read(self, path: str) -> bytes | None:
        return self._files.get(path)

    def listdir(self, path: str) -> list[str]:
        prefix = f"{path}/" if path else ""
        return sorted({p[len(prefix) :].split("/")[0] for p in self._files if p.startswith(prefix)})


@cache
def _verifier_plugins() -> tuple[VerifierPlugin, ...]:
    plugins = discover(kinds=("signers",))
    return tuple(plugin for _, plugin in sorted(plugins.verifiers().items()))


def _keyless_verifier(files: tuple[tuple[str, bytes], ...]) -> BundleVerifier | None:
    """A verifier from the first verifier plugin that `files` configure, or None (none configured)."""
    if not files:
        return None
    memory = _MemoryFiles(files)
    for plugin in _verifier_plugins():
        verifier = plugin.open_verifier(memory)
        if verifier is not None:
            return verifier
    return None


def trust_files(files: FileSource) -> list[TrustFile]:
    """The trust material the installed verifier plugins read from `files`, in their order. Plugins are
    asked only when `trust/` holds a file the core does not read itself (a repository without one has no
    verifier material, and auditing it loads no verifier plugin)."""
    if all(_read_by_the_core(item.path) for item in _every_trust_file(files)):
        return []
    out: dict[str, TrustFile] = {}
    for plugin in _verifier_plugins():
        named = plugin.trust_files(files) if isinstance(plugin, TrustMaterial) else _every_trust_file(files)
        for item in named:
            out.setdefault(item.path, item)
    return list(out.values())


def keyless_files(files: FileSource) -> tuple[tuple[str, bytes], ...]:
    """The verifier trust material in `files` with its bytes (empty when nothing configures a verifier)."""
    out = []
    for item in trust_files(files):
        data = files.read(item.path)
        if data is not None:
            out.append((item.path, data))
    return tuple(out)


def load_keyless(repo: Repo, branch: str) -> tuple[tuple[str, bytes], ...]:
    """`keyless_files` of the branch head (empty when the branch does not exist)."""
    commit = repo.resolve_ref(f"refs/heads/{branch}")
    if commit is None:
        return ()
    return keyless_files(repo.tree(commit))


def _read_by_the_core(path: str) -> bool:
    """A file under `trust/` the core reads itself (allowed signers, groups, evidence keys)."""
    return path in (ALLOWED_SIGNERS, GROUPS_FILE) or path.startswith(f"{KEYS_DIR}/")


def _every_trust_file(files: FileSource, directory: str = TRUST_DIR, depth: int = 0) -> list[TrustFile]:
    out = []
    for name in files.listdir(directory):
        path = f"{directory}/{name}"
        if path.startswith(f"{KEYS_DIR}/") or path == KEYS_DIR:
            continue  # the evidence keys are the core's, and never a verifier plugin's
        if files.read(path) is not None:
            out.append(TrustFile(path))
        elif depth < 8:
            out += _every_trust_file(files, path, depth + 1)
    return out
