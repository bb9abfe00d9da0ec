"""The SSH wire format (RFC 4251 §5): length-prefixed strings, uint32s and mpints.

Internal to `reconciler.sshsig`: it reads and writes bytes only, and must know nothing of keys,
signatures or allowed-signers files.
"""

from __future__ import annotations


class WireError(Exception):
    """Bytes that do not follow the SSH wire format."""


class WireReader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._data):
            raise WireError("truncated")
        chunk = self._data[self._at : self._at + size]
        self._at += size
        return chunk

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def string(self) -> bytes:
        return self.take(self.u32())

    def text(self) -> str:
        raw = self.string()
        if b"\0" in raw:
            raise WireError("a text field holds a NUL byte")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError("a text field is not UTF-8") from exc

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise WireError("a negative integer")
        return int.from_bytes(raw, "big")

    def end(self) -> None:
        if self._at != len(self._data):
            raise WireError("trailing data")


def wire_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data
