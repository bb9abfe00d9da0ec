"""Write OCI image layouts deterministically, for tests and benchmarks (standard library only).

Same inputs, same bytes, same digests: the layer is a tar with one file (mtime 0, owner root), gzip'd
with mtime 0; every JSON document has sorted keys and no whitespace. A `LayoutBuilder` writes
`oci-layout`, `index.json` and `blobs/sha256/<hex>` into a directory, single-arch images and
multi-arch indexes (one manifest per platform), each optionally tagged with the
`org.opencontainers.image.ref.name` annotation, and returns the descriptors it wrote. `skopeo copy
oci:<dir>:<tag>` reads such a directory.

Also `DirFiles`, a directory-backed `FileSource` (the core's read-only view of a repository).
Nothing here touches the network.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_CONTENT = b"stella test image\n"
DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64")


def canonical_json(value: object) -> bytes:
    """Sorted keys, no whitespace: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(content: bytes, name: str = "stella.txt") -> bytes:
    """An uncompressed tar holding one file `name` with `content`, reproducible byte for byte."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor of a blob this module wrote."""

    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class MultiArch:
    """A multi-arch image: the index, and the manifest of each platform (`"linux/arm64"`)."""

    index: Descriptor
    platforms: dict[str, Descriptor]


class LayoutBuilder:
    """Writes an OCI image layout into `root` (created if needed); `index.json` is kept current."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
        self._entries: list[dict[str, object]] = []
        self._write_index()

    def blob(self, data: bytes, media_type: str) -> Descriptor:
        """Store `data` as a blob; its descriptor."""
        digest = sha256_digest(data)
        (self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    def image(
        self, tag: str | None, *, content: bytes = DEFAULT_CONTENT, platform: str = "linux/amd64"
    ) -> Descriptor:
        """A single-platform image whose layer holds `content`; tagged `tag` unless None."""
        os_name, _, architecture = platform.partition("/")
        tar = layer_tar(content)
        layer = self.blob(gzip.compress(tar, mtime=0), OCI_LAYER)
        config = self.blob(
            canonical_json(
                {
                    "architecture": architecture,
                    "os": os_name,
                    "config": {},
                    "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar)]},
                }
            ),
            OCI_CONFIG,
        )
        manifest = self.blob(
            canonical_json(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": config.as_json(),
                    "layers": [layer.as_json()],
                }
            ),
            OCI_MANIFEST,
        )
        if tag is not None:
            self.tag(tag, manifest)
        return manifest

    def multi_arch(
        self,
        tag: str | None,
        *,
        content: bytes = DEFAULT_CONTENT,
        platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
    ) -> MultiArch:
        """An index of one image per platform (all with `content`); tagged `tag` unless None."""
        children = {p: self.image(None, content=content, platform=p) for p in platforms}
        entries = []
        for platform, child in children.items():
            os_name, _, architecture = platform.partition("/")
            entries.append({**child.as_json(), "platform": {"architecture": architecture, "os": os_name}})
        index = self.blob(
            canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
            OCI_INDEX,
        )
        if tag is not None:
            self.tag(tag, index)
        return MultiArch(index, children)

    def tag(self, tag: str, descriptor: Descriptor) -> None:
        """Point `tag` at `descriptor` in `index.json` (replacing an entry with the same tag)."""
        entry = {**descriptor.as_json(), "annotations": {REF_NAME: tag}}
        for position, existing in enumerate(self._entries):
            annotations = existing.get("annotations")
            if isinstance(annotations, dict) and annotations.get(REF_NAME) == tag:
                self._entries[position] = entry
                break
        else:
            self._entries.append(entry)
        self._write_index()

    def _write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self._entries}
        (self.root / "index.json").write_bytes(canonical_json(index))


class DirFiles:
    """A `FileSource` over a directory: POSIX paths relative to `root`, read-only."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, path: str) -> Path:
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts:
            raise ValueError(f"{path!r} is not a relative path inside the repository")
        return self.root.joinpath(*pure.parts)

    def read(self, path: str) -> bytes | None:
        target = self._path(path)
        return target.read_bytes() if target.is_file() else None

    def listdir(self, path: str) -> list[str]:
        target = self._path(path)
        return sorted(p.name for p in target.iterdir()) if target.is_dir() else []
