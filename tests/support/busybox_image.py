"""A tiny runnable image for engine tests: static busybox and a marker file, as an OCI image layout.

`busybox_layout(root, tag, marker)` writes (with `tests.support.oci.LayoutBuilder`) one image of the
host's platform whose single gzip layer holds `/bin/busybox` (a copy of Debian's static
`/usr/bin/busybox`, from `busybox-static`), `/bin/sh` (a symlink to it) and `/etc/marker` (`marker`
and a newline); its config runs `["/bin/busybox", "sleep", "3600"]` and carries the label
`marker=<marker>`. Different markers give different digests; the same inputs give the same bytes.
`push_busybox(registry_host, workdir, repository, tag, marker)` builds it and pushes it with skopeo,
returning the pinned reference `host/repository@sha256:…`.

Nothing here runs a container or talks to an engine.
"""

from __future__ import annotations

import gzip
import io
import os
import platform
import tarfile
from pathlib import Path

from .oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Descriptor, LayoutBuilder, canonical_json, sha256_digest
from .registry import ToolMissing, skopeo_push

BUSYBOX = Path("/usr/bin/busybox")
COMMAND = ["/bin/busybox", "sleep", "3600"]
_ARCHITECTURES = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


def host_architecture() -> str:
    """The OCI architecture name of this machine (`amd64`, `arm64`, …)."""
    machine = platform.machine()
    return _ARCHITECTURES.get(machine, machine)


def find_busybox() -> Path:
    """The static busybox to copy, or `ToolMissing` saying how to install it."""
    if not os.access(BUSYBOX, os.X_OK):
        raise ToolMissing(f"{BUSYBOX} is missing: run `make setup` (it installs busybox-static)")
    return BUSYBOX


def _entry(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def busybox_tar(marker: str) -> bytes:
    """The uncompressed layer: /bin/busybox, /bin/sh -> busybox, /etc/marker; reproducible."""
    binary = find_busybox().read_bytes()
    text = f"{marker}\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_entry("bin", tarfile.DIRTYPE, 0o755))
        tar.addfile(_entry("bin/busybox", tarfile.REGTYPE, 0o755, len(binary)), io.BytesIO(binary))
        tar.addfile(_entry("bin/sh", tarfile.SYMTYPE, 0o777, link="busybox"))
        tar.addfile(_entry("etc", tarfile.DIRTYPE, 0o755))
        tar.addfile(_entry("etc/marker", tarfile.REGTYPE, 0o644, len(text)), io.BytesIO(text))
    return buffer.getvalue()


def busybox_layout(root: Path, tag: str, marker: str = "one") -> Descriptor:
    """Write the busybox image tagged `tag` into the OCI layout `root`; its manifest's descriptor."""
    builder = LayoutBuilder(root)
    tar = busybox_tar(marker)
    layer = builder.blob(gzip.compress(tar, compresslevel=6, mtime=0), OCI_LAYER)
    config = builder.blob(
        canonical_json(
            {
                "architecture": host_architecture(),
                "os": "linux",
                "config": {"Cmd": COMMAND, "Labels": {"marker": marker}},
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar)]},
            }
        ),
        OCI_CONFIG,
    )
    manifest = builder.blob(
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
    builder.tag(tag, manifest)
    return manifest


def push_busybox(registry_host: str, workdir: Path, repository: str, tag: str, marker: str = "one") -> str:
    """Build the image in `workdir` and push it as `registry_host/repository:tag`; the pinned reference."""
    layout = workdir / f"busybox-{marker}"
    manifest = busybox_layout(layout, tag, marker)
    skopeo_push(layout, tag, f"{registry_host}/{repository}:{tag}")
    return f"{registry_host}/{repository}@{manifest.digest}"
