"""Installing the guard: write a repository's `hooks/pre-receive` script, and nothing else.

An existing hook with other content is replaced only when asked (`force`); the same hook is left alone.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput
from ..repo import Repo


@dataclass(frozen=True)
class Installed:
    """Where the hook was installed, what it runs, and whether the file was (re)written."""

    path: Path
    command: tuple[str, ...]
    changed: bool


def hook_script(command: Sequence[str]) -> str:
    """The `hooks/pre-receive` script that runs `command` (which reads the update lines on stdin)."""
    return (
        "#!/bin/sh\n"
        "# Installed by `stella hook install`: refuses pushes that rewrite the evidence ref or change a\n"
        "# release's digests (docs/hook.md). git passes the ref updates on stdin and GIT_DIR.\n"
        f"exec {shlex.join(command)}\n"
    )


def install(repository: Path, command: Sequence[str], *, force: bool = False) -> Installed:
    """Write `hooks/pre-receive` running `command` in the Git repository at `repository`.

    An existing hook with other content is replaced only with `force`; the same hook is left alone.
    """
    repo = Repo(repository)
    given = repository.resolve()
    if repo.path.resolve() not in (given, (given / ".git").resolve()):
        raise InvalidInput(f"{repository}: not a Git repository (found {repo.path} above it)")
    target = repo.path / "hooks" / "pre-receive"
    script = hook_script(command)
    if target.exists() or target.is_symlink():
        current = target.read_bytes() if target.is_file() else None
        if current == script.encode() and os.access(target, os.X_OK):
            return Installed(target, tuple(command), changed=False)
        if not force:
            raise InvalidInput(
                f"{target} already exists and is not this hook: review it, then pass --force to replace it"
            )
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_name(".pre-receive.stella-tmp")
    tmp.write_text(script)
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return Installed(target, tuple(command), changed=True)
