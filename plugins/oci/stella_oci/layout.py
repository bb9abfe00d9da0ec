"""Resolve image references offline, from OCI image layout directories in the user's repository.

What it does: a mirror is a tree of OCI image layouts (`oci-layout`, `index.json`,
`blobs/sha256/<hex>`), read only through the `FileSource` the core passes to `open` (POSIX paths
relative to the repository root, so a Git tree works as well as a directory). The mirror root is
the entry's `path` (default `mirror/oci`). For `registry/repository:tag` the layout is looked for
at `<root>/<registry>/<repository>/` first, then at `<root>/<repository>/`. The tag is the
`org.opencontainers.image.ref.name` annotation of an entry of `index.json` (the bare tag, as skopeo
and the image spec write it, or `<image>:<tag>`); the answer is that entry's digest, so a
multi-arch tag resolves to its index. Before answering, the blob the digest names must exist, hash
to its name and have the size the entry gives. A reference with a digest resolves when that blob
exists and is intact.

Errors: always `InvalidInput`, since the mirror is the user's data: a missing layout or tag names
the paths searched; a malformed, incomplete or corrupt mirror names the file at fault.

What it must not do: touch the network, read anything except through the `FileSource`, write, or
keep state between calls (so it is safe to call from several threads at once).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import TracebackType
from typing import Final

from reconciler.api import FileSource, ImageRef, InvalidInput, PluginManifest, RegistryOptions

DEFAULT_ROOT: Final = "mirror/oci"
REF_NAME: Final = "org.opencontainers.image.ref.name"
_SHA256_RE: Final = re.compile(r"^sha256:([0-9a-f]{64})$")
_ALGORITHM_RE: Final = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


def _package_version() -> str:
    try:
        return importlib.metadata.version("stella-oci")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _join(*parts: str) -> str:
    return "/".join(part for part in parts if part)


def _normalise_root(path: str | None) -> str:
    raw = DEFAULT_ROOT if path is None else path
    pure = PurePosixPath(raw)
    if pure.is_absolute() or ".." in pure.parts or "\\" in raw:
        raise InvalidInput(f"mirror path {raw!r} must be a relative POSIX path inside the repository")
    return "/".join(part for part in pure.parts if part != ".")


@dataclass(frozen=True)
class _Entry:
    """One descriptor of `index.json`."""

    digest: str
    size: int
    media_type: str
    ref_name: str | None


def _load_json(files: FileSource, path: str, what: str) -> object:
    data = files.read(path)
    if data is None:
        raise InvalidInput(f"{what} is missing", file=path)
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not UTF-8 JSON", file=path) from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc.msg}", file=path, line=exc.lineno) from exc


def _entries(files: FileSource, index_path: str) -> list[_Entry]:
    index = _load_json(files, index_path, "the image layout index")
    if not isinstance(index, dict) or index.get("schemaVersion") != 2:
        raise InvalidInput("not an OCI image index (schemaVersion 2 expected)", file=index_path)
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidInput("the index has no `manifests` list", file=index_path)
    entries = []
    for position, item in enumerate(manifests):
        where = f"manifests[{position}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} is not a descriptor", file=index_path)
        digest, size, media_type = item.get("digest"), item.get("size"), item.get("mediaType")
        if not isinstance(digest, str) or not _ALGORITHM_RE.match(digest):
            raise InvalidInput(f"{where} has no valid digest", file=index_path)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"{where} has no valid size", file=index_path)
        if not isinstance(media_type, str):
            raise InvalidInput(f"{where} has no mediaType", file=index_path)
        annotations = item.get("annotations")
        ref_name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
        entries.append(_Entry(digest, size, media_type, ref_name if isinstance(ref_name, str) else None))
    return entries


class LayoutRegistry:
    """A `Registry` over the OCI image layouts of a mirror directory. Stateless and thread-safe."""

    def __init__(self, files: FileSource, root: str | None = None) -> None:
        self._files = files
        self._root = _normalise_root(root)

    @property
    def root(self) -> str:
        """The mirror root, relative to the repository (`mirror/oci`)."""
        return self._root

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> LayoutRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def candidates(self, ref: ImageRef) -> list[str]:
        """The layout directories searched for `ref`, in order."""
        return [
            _join(self._root, ref.registry, ref.repository),
            _join(self._root, ref.repository),
        ]

    def resolve(self, ref: ImageRef) -> str:
        """The digest `ref`'s tag names in the mirror, or `ref`'s digest once its blob checks out."""
        searched = self.candidates(ref)
        layout = next((d for d in searched if self._is_layout(d)), None)
        if layout is None:
            paths = " and ".join(f"{d}/oci-layout" for d in searched)
            raise InvalidInput(f"image {ref} is not in the mirror: there is no {paths}")
        index_path = _join(layout, "index.json")
        if ref.digest is not None:
            sizes = {e.size for e in _entries(self._files, index_path) if e.digest == ref.digest}
            size = next(iter(sizes)) if len(sizes) == 1 else None
            self._verify_blob(layout, ref.digest, size, index_path, listed=bool(sizes), ref=ref)
            return ref.digest
        tag = ref.tag
        if tag is None:
            raise InvalidInput(f"{ref} has neither a tag nor a digest")
        entries = _entries(self._files, index_path)
        names = {tag, f"{ref.repo}:{tag}", f"{ref.registry}/{ref.repository}:{tag}"}
        matches = {e.digest: e for e in entries if e.ref_name in names}
        if not matches:
            known = sorted({e.ref_name for e in entries if e.ref_name is not None})
            listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
            raise InvalidInput(
                f"tag {tag!r} of image {ref} is not in the mirror: no entry of {index_path} is "
                f"annotated {REF_NAME}={tag}" + (f" (tags there: {listed})" if known else "")
            )
        if len(matches) > 1:
            raise InvalidInput(
                f"tag {tag!r} names several digests ({', '.join(sorted(matches))})",
                file=index_path,
            )
        entry = next(iter(matches.values()))
        self._verify_blob(layout, entry.digest, entry.size, index_path, listed=True, ref=ref)
        return entry.digest

    def _is_layout(self, directory: str) -> bool:
        path = _join(directory, "oci-layout")
        marker = self._files.read(path)
        if marker is None:
            return False
        try:
            data = json.loads(marker)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput("the oci-layout marker is not valid JSON", file=path) from exc
        version = data.get("imageLayoutVersion") if isinstance(data, dict) else None
        if not isinstance(version, str) or version.split(".")[0] != "1":
            raise InvalidInput(f"unsupported imageLayoutVersion {version!r} (1.x expected)", file=path)
        return True

    def _verify_blob(
        self, layout: str, digest: str, size: int | None, index_path: str, *, listed: bool, ref: ImageRef
    ) -> None:
        """The blob `digest` names exists, hashes to its name and has `size` (when known)."""
        match = _SHA256_RE.match(digest)
        if match is None:
            raise InvalidInput(
                f"{digest} uses an unsupported digest algorithm (only sha256 is supported)",
                file=index_path if listed else None,
            )
        blob_path = _join(layout, "blobs", "sha256", match.group(1))
        data = self._files.read(blob_path)
        if data is None:
            if not listed:
                raise InvalidInput(f"image {ref} is not in the mirror: there is no {blob_path}")
            raise InvalidInput(
                f"the mirror is incomplete: {index_path} names {digest}, but the blob is missing",
                file=blob_path,
            )
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise InvalidInput(
                f"corrupt mirror: the blob hashes to {actual}, not to its name", file=blob_path
            )
        if size is not None and len(data) != size:
            raise InvalidInput(
                f"corrupt mirror: the blob is {len(data)} bytes, but {index_path} gives size {size}",
                file=blob_path,
            )


class LayoutPlugin:
    """The `oci-layout` entry point: the OCI image layouts of the repository's mirror."""

    manifest: PluginManifest = PluginManifest(
        name="oci-layout",
        version=_package_version(),
        kinds=("registry",),
        network=False,
        description="OCI image layouts in the repository (mirror/oci) as an offline registry",
    )

    def open(self, options: RegistryOptions, files: FileSource) -> LayoutRegistry:
        """A registry over the layouts under `options.path` (default `mirror/oci`) in `files`."""
        if options.options:
            unknown = ", ".join(sorted(str(key) for key in options.options))
            raise InvalidInput(f"mirror registry {options.host}: unknown option(s) {unknown}")
        return LayoutRegistry(files, options.path)


plugin = LayoutPlugin()
"""The object the `stella.registries` entry point `oci-layout` names."""
