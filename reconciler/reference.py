"""Parse container image references (`host[:port]/path[:tag][@sha256:hex]`).

Pure: no network, no disk. Follows the grammar of the distribution project's reference package:
a first path component that contains a `.` or `:`, or is `localhost`, is a registry host; otherwise the
image lives on Docker Hub (`docker.io`, with `library/` for single-component names).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)
DOCKER_HUB = "docker.io"


class ReferenceError(ValueError):
    """The string is not a valid image reference."""


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference. `written` keeps the repository exactly as the user wrote it."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None
    written: str

    @property
    def repo(self) -> str:
        """The reference without tag or digest, as written (`registry.example.com/shop/web`)."""
        return self.written

    @property
    def pinned(self) -> str:
        """`repo@sha256:...` (requires a digest)."""
        if self.digest is None:
            raise ReferenceError(f"{self} has no digest")
        return f"{self.written}@{self.digest}"

    @property
    def host(self) -> str:
        """The registry host without the port."""
        if self.registry.startswith("["):
            return self.registry[1 : self.registry.index("]")]
        return self.registry.rsplit(":", 1)[0]

    @property
    def is_loopback(self) -> bool:
        """True for localhost and 127.0.0.0/8 (and ::1): reached over plain HTTP, like Docker."""
        host = self.host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def with_digest(self, digest: str) -> ImageRef:
        return ImageRef(self.registry, self.repository, self.tag, digest, self.written)

    def __str__(self) -> str:
        out = self.written
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse(text: str) -> ImageRef:
    """Parse `text` into an ImageRef or raise ReferenceError with the reason."""
    if not text or len(text) > 512 or any(c.isspace() or ord(c) < 32 for c in text):
        raise ReferenceError(f"invalid image reference {text!r}")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST_RE.match(digest):
            raise ReferenceError(f"invalid digest in {text!r}: expected sha256:<64 hex>")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise ReferenceError(f"invalid tag {tag!r} in {text!r}")
    parts = rest.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, path = parts[0], parts[1:]
        if not _HOST_RE.match(registry):
            raise ReferenceError(f"invalid registry host {registry!r} in {text!r}")
    else:
        registry, path = DOCKER_HUB, (["library", *parts] if len(parts) == 1 else parts)
    if not path or not all(_COMPONENT_RE.match(p) for p in path):
        raise ReferenceError(
            f"invalid repository name in {text!r}: path components are lowercase letters, "
            "digits and separators (. _ __ -)"
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry, "/".join(path), tag, digest, rest)
