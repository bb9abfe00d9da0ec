"""Open an evidence packet's tar safely: read it as a stream, check every member's header (path
tricks, links, special files, duplicates, sizes over their caps, too many members) before anything is
written, then extract only the members wanted.

Knows nothing of Git or of what the members mean (`packet` does). Writes only under the directory it
is given.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
import zlib
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InvalidInput

BUNDLE_MEMBER = "evidence.bundle"
MANIFEST_MEMBER = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
"""The most `manifest.json` may hold."""
MAX_MEMBER_BYTES = 16 << 20
"""The most any member but the Git bundle may hold (README, keys, allowed signers, keyless policy and
trusted root)."""
MAX_PACKET_MEMBERS = 10_000
"""The most members a packet may have (an export writes fewer than ten)."""
UNPACKED_BASE = 64 << 20
UNPACKED_RATIO = 4
"""A packet may unpack to at most `UNPACKED_BASE` + `UNPACKED_RATIO` x its size (`unpacked_cap`)."""
_HEADROOM = 16 << 20
"""What tar headers and padding may add to the members' bytes in the stream."""


class PacketError(InvalidInput):
    """The packet is unusable: not a packet, a member outside the packet, a link, no manifest..."""


def _unsafe(name: str) -> str | None:
    """Why a member name could write outside the directory it is extracted into (None: it is safe)."""
    if not name or "\x00" in name:
        return "an empty or NUL name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if "\\" in name:
        return "a backslash in the name"
    if ".." in PurePosixPath(name).parts:
        return "a parent-directory (..) component"
    return None


def unpacked_cap(packet_size: int) -> int:
    """How many bytes a packet of `packet_size` bytes may unpack to: `UNPACKED_BASE` plus
    `UNPACKED_RATIO` times its size (a Git bundle is compressed already: gzip barely shrinks it)."""
    return UNPACKED_BASE + UNPACKED_RATIO * packet_size


def _member_cap(name: str, total: int) -> tuple[int, str]:
    """The most bytes member `name` may hold, and how the cap is named in a refusal."""
    if name == MANIFEST_MEMBER:
        return MAX_MANIFEST_BYTES, f"the cap of {_size(MAX_MANIFEST_BYTES)} for {MANIFEST_MEMBER}"
    if name == BUNDLE_MEMBER:
        return total, (
            f"the cap of {_size(total)} for the packet's contents "
            f"({_size(UNPACKED_BASE)} plus {UNPACKED_RATIO} times the packet's size)"
        )
    return MAX_MEMBER_BYTES, f"the cap of {_size(MAX_MEMBER_BYTES)} for a member other than {BUNDLE_MEMBER}"


def _size(count: int) -> str:
    """`count` bytes for a message: `16 MiB`, `72.4 MiB`."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.1f}".removesuffix(".0") + f" {unit}"
    return f"{count} bytes"


class _Capped(io.RawIOBase):
    """A file object over the decompressed stream that refuses to give more than `cap` bytes: it bounds
    what tarfile itself reads into memory (long names, PAX headers), whatever the headers declare."""

    def __init__(self, packet: Path, raw: Any, cap: int) -> None:
        super().__init__()
        self.packet, self.raw, self.cap, self.count = packet, raw, cap, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.raw.read(size if size >= 0 else self.cap + 1 - self.count)
        self.count += len(data)
        if self.count > self.cap:
            raise PacketError(
                f"{self.packet}: unpacks to more than {_size(self.cap)} (the cap: {_size(UNPACKED_BASE)} "
                f"plus {UNPACKED_RATIO} times the packet's size, and {_size(_HEADROOM)} for tar headers); "
                "the packet is not safe to open"
            )
        return data


@contextmanager
def _opened(packet: Path) -> Iterator[tuple[tarfile.TarFile, int]]:
    """The packet as a tar stream (read once, front to back), with its unpacked-size cap; the errors of
    a file that is not a .tar.gz are `PacketError`."""
    if not packet.is_file():
        raise PacketError(f"{packet}: no such file")
    try:
        cap = unpacked_cap(packet.stat().st_size)
        with (
            open(packet, "rb") as raw,
            gzip.GzipFile(fileobj=raw, mode="rb") as gz,
            tarfile.open(fileobj=_Capped(packet, gz, cap + _HEADROOM), mode="r|") as tar,
        ):
            yield tar, cap
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise PacketError(f"{packet}: not a .tar.gz evidence packet, or a damaged one: {exc}") from exc
    except OSError as exc:
        raise PacketError(f"{packet}: cannot extract the packet: {exc}") from exc


def _members(packet: Path, tar: tarfile.TarFile, cap: int) -> Iterator[tuple[tarfile.TarInfo, str]]:
    """Each member with its normalised name, refusing (`PacketError`) any absolute path or `..`
    component, link, device or other special file, duplicate name, member over its size cap, more than
    `MAX_PACKET_MEMBERS` members and more than `cap` bytes in all, from the headers alone."""
    seen: set[str] = set()
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > MAX_PACKET_MEMBERS:
            raise PacketError(
                f"{packet}: more than {MAX_PACKET_MEMBERS} members (the cap); the packet is not safe to open"
            )
        why = _unsafe(member.name)
        name = str(PurePosixPath(member.name))
        limit, named = _member_cap(name, cap)
        if why is None and (member.issym() or member.islnk()):
            why = f"a {'symbolic' if member.issym() else 'hard'} link (to {member.linkname!r})"
        elif why is None and not (member.isfile() or member.isdir()):
            why = "a special file (device, FIFO...)"
        elif why is None and member.size > limit:
            why = f"{member.size} bytes, over {named}"
        if why is None and name in seen:
            why = "a duplicate name"
        if why is not None:
            raise PacketError(
                f"{packet}: refusing member {member.name!r}: {why}; the packet is not safe to open"
            )
        seen.add(name)
        total += member.size
        if total > cap:
            raise PacketError(
                f"{packet}: its members hold more than {_size(cap)} (the cap: {_size(UNPACKED_BASE)} plus "
                f"{UNPACKED_RATIO} times the packet's size); the packet is not safe to open"
            )
        yield member, name


@dataclass(frozen=True)
class _Scan:
    files: frozenset[str]
    """Every regular member, by normalised name."""
    manifest: bytes | None


def _scan(packet: Path) -> _Scan:
    """Check every member's header (see `_members`) and read the manifest; writes nothing."""
    files: set[str] = set()
    manifest: bytes | None = None
    with _opened(packet) as (tar, cap):
        for member, name in _members(packet, tar, cap):
            if not member.isfile():
                continue
            files.add(name)
            if name == MANIFEST_MEMBER:
                source = tar.extractfile(member)
                if source is None:
                    raise PacketError(f"{packet}: cannot read member {name!r}")
                with source:
                    manifest = source.read(MAX_MANIFEST_BYTES + 1)
    return _Scan(frozenset(files), manifest)


def extract_packet(packet: Path, dest: Path, members: Collection[str] | None = None) -> dict[str, str]:
    """Extract the regular files of `packet` into `dest` (only those named in `members`, when given);
    returns member -> sha256 of what was extracted.

    Every header is checked first, before anything is written (`_members`: path tricks, links, special
    files, duplicates, sizes over their caps, too many members), then the tar is read again and only
    the wanted members are written. An unusable packet is `PacketError`.
    """
    _scan(packet)
    return _extract(packet, dest, members)


def _extract(packet: Path, dest: Path, wanted: Collection[str] | None) -> dict[str, str]:
    digests: dict[str, str] = {}
    with _opened(packet) as (tar, cap):
        for member, name in _members(packet, tar, cap):
            if not member.isfile() or (wanted is not None and name not in wanted):
                continue
            target = dest.joinpath(*PurePosixPath(name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                raise PacketError(f"{packet}: cannot read member {name!r}")
            digest = hashlib.sha256()
            with source, open(target, "xb") as fh:
                while block := source.read(1 << 20):
                    digest.update(block)
                    fh.write(block)
            digests[name] = digest.hexdigest()
    return digests
