"""Private Docker Engines for tests: start a `dockerd` of our own, stop it, and leave nothing behind.

`start_dockerd()` runs Debian's dockerd (20.10, `docker.io`) in a short directory under /tmp (a unix
socket path must stay under 108 bytes) with everything it owns inside that directory: data root, exec
root (its managed containerd lives there), pidfile, socket, log, and a `daemon.json` whose
`deprecated-key-path` keeps the engine's identity there too (two engines get distinct IDs and
/etc/docker/key.json is not touched). No bridge, no iptables, no forwarding: test containers use
`network_mode: none`. It returns once `GET /_ping` answers (30 s at most).

`DockerDaemon.stop()` removes every container (busybox as PID 1 ignores SIGTERM, which would cost the
engine's 10 s stop timeout), then SIGTERMs the engine by its PID and waits; `kill()` SIGKILLs it,
leaving containers and mounts as a crash does; `start()` starts it again on the same directory
(after `kill()` with containers running, that takes about 10 s: the engine stops what its dead
predecessor left). Starting takes well under a second here, stopping about one.
`close()` stops it, ends leftover processes that name the directory (its containerd and shims), unmounts
whatever is still mounted under it (after SIGKILL the data root stays bind-mounted on itself) and
removes it; it refuses to delete anything while a mount remains.

Nothing here touches another engine, the host's /var/lib/docker, or a process it did not start.
A missing dockerd raises `ToolMissing`: callers skip on it (see `tests/e2e/test_docker_agent_plugin.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import docker

from .registry import ToolMissing

DOCKERD = "/usr/sbin/dockerd"
SETUP_HINT = "run `make setup` (it installs docker.io and busybox-static)"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def find_dockerd() -> str:
    """The path of dockerd, or `ToolMissing` saying how to install it."""
    if os.access(DOCKERD, os.X_OK):
        return DOCKERD
    found = shutil.which("dockerd")
    if found is None:
        raise ToolMissing(f"dockerd is not installed (looked for {DOCKERD} and on PATH): {SETUP_HINT}")
    return found


def _ping(sock: Path) -> bool:
    """True when the engine behind `sock` answers `GET /_ping` with 200."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(str(sock))
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            head = conn.recv(64)
    except OSError:
        return False
    return head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n", 1)[0]


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root` (deepest first), from /proc/mounts."""
    prefix = str(root)
    found = []
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            point = line.split(" ")[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


def _pids_naming(root: Path) -> list[int]:
    """Processes whose command line names `root`: the engine's containerd and shims, all ours."""
    needle = str(root).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


class DockerDaemon:
    """A dockerd of our own in `root`; `endpoint` is its `unix://` address for SDKs and Compose."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.exec_root = root / "exec"
        self.socket = root / "docker.sock"
        self.pidfile = root / "dockerd.pid"
        self.log_path = root / "dockerd.log"
        self.config = root / "daemon.json"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> docker.DockerClient:
        """A new SDK client of this engine (API version negotiated); the caller closes it."""
        return docker.DockerClient(base_url=self.endpoint, timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self, ready_timeout: float = READY_TIMEOUT) -> None:
        """Start the engine (again) on this directory; return once `/_ping` answers."""
        if self.running:
            return
        binary = find_dockerd()
        for path in (self.data, self.exec_root):
            path.mkdir(parents=True, exist_ok=True)
        self._forget_dead_containerd()
        self.config.write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}) + "\n")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        command = [
            binary,
            "--data-root", str(self.data),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "-H", self.endpoint,
            "--bridge=none",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--config-file", str(self.config),
        ]  # fmt: skip
        if self._log is not None:
            self._log.close()
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=environ
        )
        deadline = time.monotonic() + ready_timeout
        while not _ping(self.socket):
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop(remove_containers=False)
                raise RuntimeError(
                    f"dockerd did not answer /_ping within {ready_timeout} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)  # readiness poll, not a wait for a result

    def _forget_dead_containerd(self) -> None:
        """Remove the managed containerd's pidfile when that process is gone or a zombie. After a
        SIGKILL the orphaned containerd may stay a zombie (a PID 1 that does not reap); dockerd would
        take it for alive and wait for its socket until it gives up."""
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "gone"
        if state in ("Z", "X", "gone"):
            pidfile.unlink(missing_ok=True)

    def remove_containers(self) -> None:
        """`docker rm -f` every container of this engine."""
        client = self.client()
        try:
            for container in client.containers.list(all=True, sparse=True):
                container.remove(force=True)
        finally:
            client.close()

    def stop(self, *, remove_containers: bool = True) -> None:
        """Remove the containers (unless told not to), SIGTERM the engine and wait; idempotent."""
        if not self.running:
            return
        if remove_containers:
            with contextlib.suppress(docker.errors.DockerException, OSError):
                self.remove_containers()
        self._signal(signal.SIGTERM, STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL the engine, as a crash would: containers, mounts and its socket file stay."""
        if self.running:
            self._signal(signal.SIGKILL, STOP_TIMEOUT)

    def _signal(self, signum: signal.Signals, timeout: float) -> None:
        assert self.process is not None
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        """Stop the engine, end what it left running, unmount and delete its directory; idempotent."""
        self.stop()
        for pid in _pids_naming(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for point in _mounts_under(self.root):
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        if self._log is not None:
            self._log.close()
            self._log = None
        left = _mounts_under(self.root)
        if left:
            raise RuntimeError(f"still mounted, not deleting {self.root}: {', '.join(left)}")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> DockerDaemon:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def start_dockerd(root: Path | None = None, *, ready_timeout: float = READY_TIMEOUT) -> DockerDaemon:
    """Start a private engine in `root` (default: a new short directory under /tmp) and return it
    once it answers; use it as a context manager, or call `close()`."""
    find_dockerd()
    daemon = DockerDaemon(root or Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp")))
    try:
        daemon.start(ready_timeout)
    except BaseException:
        daemon.close()
        raise
    return daemon
