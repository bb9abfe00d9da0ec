"""A real `git daemon` on 127.0.0.1 serving (and accepting pushes to) every repository in a directory.

`start_git_daemon(base)` picks a free port, starts the daemon, waits for its "Ready to rumble" line and
then until `git ls-remote` answers; `stop()` ends it by its PID and closes its pipe. Nothing is left
running or open afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

READY = "Ready to rumble"
START_TIMEOUT = 10.0
PROBE = "_probe.git"
"""An empty bare repository in the served directory: what `git ls-remote` asks for at start."""


class GitDaemonFailed(RuntimeError):
    """The daemon did not start (its log is in the message)."""


@dataclass
class GitDaemon:
    base: Path
    port: int
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def url(self, name: str) -> str:
        """`git://127.0.0.1:<port>/<name>` for a repository `base/<name>`."""
        return f"git://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the daemon by its PID and wait for it; close its stderr pipe."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(base: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(base), "GIT_CONFIG_NOSYSTEM": "1"}


def _start(base: Path, port: int) -> GitDaemon:
    process = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--verbose",
            "--informative-errors",
            f"--base-path={base}",
            "--export-all",
            "--enable=receive-pack",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(base),
    )
    daemon = GitDaemon(base, port, process)
    ready = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:  # drains the pipe until the daemon exits (it logs every connection)
            daemon.log.append(line.rstrip("\n"))
            if READY in line:
                ready.set()
        ready.set()

    daemon._reader = threading.Thread(target=read, name=f"git-daemon-{port}", daemon=True)
    daemon._reader.start()
    if not ready.wait(START_TIMEOUT) or process.poll() is not None:
        daemon.stop()
        raise GitDaemonFailed(f"git daemon on port {port} did not start:\n" + "\n".join(daemon.log))
    return daemon


def restart_git_daemon(base: Path, port: int) -> GitDaemon:
    """Serve `base` again on `port`, the port of a daemon stopped before (a Git server that is back)."""
    return _start(base, port)


def start_git_daemon(base: Path, attempts: int = 5) -> GitDaemon:
    """Serve every repository under `base` on a free loopback port, read and write."""
    probe = base / PROBE
    if not probe.exists():
        subprocess.run(["git", "init", "-q", "--bare", str(probe)], check=True, env=_env(base))
    failures = []
    for _ in range(attempts):  # the free port can be taken between the probe and the daemon's bind
        try:
            daemon = _start(base, _free_port())
        except GitDaemonFailed as exc:
            failures.append(str(exc))
            continue
        done = subprocess.run(
            ["git", "ls-remote", daemon.url(PROBE)],
            capture_output=True,
            text=True,
            env=_env(base),
            timeout=30,
        )
        if done.returncode == 0:
            return daemon
        daemon.stop()
        failures.append(f"git ls-remote {daemon.url(PROBE)} failed: {done.stderr.strip()}")
    raise GitDaemonFailed("\n".join(failures))
