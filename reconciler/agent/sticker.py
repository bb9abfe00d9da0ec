"""The version sticker on a target: `<state dir>/stella.version.json`, what the target runs now.

Written atomically (a temporary file in the same directory, fsync, rename over the old one, fsync of the
directory): a reader, or the next run after a crash at any instant, sees the old sticker or the new one,
whole, never a mix. Its content is canonical JSON (RFC 8785), the same bytes the agent mirrors to
`targets/<env>/<target>/stella.version.json` on the evidence branch. Nothing else is written here.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from ..evidence import canonical

STICKER = "stella.version.json"
VERSION = "1.0"


def read_sticker(state_dir: Path) -> dict[str, Any] | None:
    """The sticker (None: the target has none yet). An unreadable one is `InvalidInput`, naming it."""
    path = state_dir / STICKER
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the sticker: {exc.strerror or exc}") from exc
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"{path}: not a sticker (not JSON): {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInput(f"{path}: not a sticker (not a JSON object)")
    return value


def sticker_bytes(sticker: dict[str, Any]) -> bytes:
    return canonical(sticker)


def write_sticker(state_dir: Path, sticker: dict[str, Any]) -> bytes:
    """Replace the sticker atomically; the bytes written."""
    data = sticker_bytes(sticker)
    fd, tmp = tempfile.mkstemp(prefix=".stella.version.", dir=state_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, state_dir / STICKER)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    directory = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return data
