"""Run a command the way an auditor would on an air-gapped machine: no network at all.

`offline(argv, cwd)` runs `argv` in a network namespace of its own (`unshare -rn`: a user namespace
mapping the caller to root, and a new network namespace holding only a down loopback) where the system
allows one, and in any case with proxies that lead nowhere, git allowed local files only, and no
`STELLA_REPO`. It returns a `Run` (exit code, stdout, stderr), like `tests.support.cli.stella`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

from tests.support.cli import Run

DEAD_PROXY = "http://127.0.0.1:9"


@cache
def _isolation() -> tuple[str, ...]:
    """`unshare -rn` when it works here (it needs unprivileged user namespaces), else nothing."""
    if shutil.which("unshare") is None:
        return ()
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False)
    return ("unshare", "-rn") if probe.returncode == 0 else ()


def offline(argv: list[str], cwd: Path, timeout: float = 120) -> Run:
    env = {
        **os.environ,
        "http_proxy": DEAD_PROXY,
        "https_proxy": DEAD_PROXY,
        "all_proxy": DEAD_PROXY,
        "GIT_ALLOW_PROTOCOL": "file",
    }
    env.pop("STELLA_REPO", None)
    done = subprocess.run(
        [*_isolation(), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return Run(done.returncode, done.stdout, done.stderr)
