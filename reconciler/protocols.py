"""The plugin interfaces of Stella, and the API version they are checked against.

A plugin is an object found through an entry point (`stella.registries`, `stella.gates`, `stella.signers`,
`stella.agents`, `stella.doctor`). It carries a `manifest` and satisfies the Protocol of its kind; the
loader (`discover.py`) checks both. Plugins take and return value objects; they never print or exit.
This module holds only interfaces and value types: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .reference import ImageRef

PLUGIN_API_VERSION = 1
"""Bumped on every incompatible change of a Protocol below; plugins declare the version they target."""


@dataclass(frozen=True)
class PluginManifest:
    """What a plugin says about itself (shown by `stella doctor`)."""

    name: str
    version: str
    kinds: tuple[str, ...]
    network: bool
    api_version: int = PLUGIN_API_VERSION
    description: str = ""


class FileSource(Protocol):
    """Read-only access to the files of a repository (a Git tree or a directory)."""

    def read(self, path: str) -> bytes | None:
        """The bytes of the file at `path` (POSIX, relative), or None when there is none."""
        ...

    def listdir(self, path: str) -> list[str]:
        """The names directly under directory `path` (empty when there is no such directory)."""
        ...


@dataclass(frozen=True)
class RegistryOptions:
    """One `registries:` entry of `stella.yaml`, as a plugin sees it."""

    host: str
    insecure: bool = False
    path: str | None = None
    credentials: str | None = None
    options: Mapping[str, object] = field(default_factory=dict)


@runtime_checkable
class Registry(Protocol):
    """Resolves image references to manifest digests. Must be safe to call from several threads."""

    def resolve(self, ref: ImageRef) -> str:
        """The `sha256:` digest the tag (or digest) of `ref` names now.

        Raises `InvalidInput` when the image or tag does not exist, `RegistryUnavailable` when the
        registry cannot be reached after retries.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class RegistryPlugin(Protocol):
    """Entry point object of group `stella.registries`: a factory of `Registry` values."""

    manifest: PluginManifest

    def open(self, options: RegistryOptions, files: FileSource) -> Registry:
        """A Registry for one configured host; `files` reads the user's repository (for mirrors)."""
        ...
