"""Real registries for tests and benchmarks, and scripted ones for faults.

- `start_registry(workdir)`: the real CNCF distribution registry (`docker-registry` from Debian) on
  127.0.0.1 and a free port, storage under `workdir`, deletes enabled; ready when `GET /v2/` says
  200. `RegistryServer.stop()` ends it by its PID.
- `skopeo_push` / `skopeo_digest`: push an OCI layout tag with skopeo; ask skopeo for a digest.
- `ImagePusher`: build a deterministic image (see `tests.support.oci`) and push it, in one call.
- `ScriptedServer`: a loopback HTTP/1.1 server answering every request with a function of it, and
  recording what it was asked; for faults (5xx, 429, slowness) and auth flows.

A missing `docker-registry` or `skopeo` raises `ToolMissing`, whose message says to run
`make setup`; tests must fail on it, never skip. Everything started here is stopped by its owner.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from .oci import DEFAULT_CONTENT, LayoutBuilder

REGISTRY_BINARY = "/usr/bin/docker-registry"
SETUP_HINT = "run `make setup` (it installs docker-registry and skopeo)"


class ToolMissing(RuntimeError):
    """A program the real-registry tests need is not installed."""


def find_tool(name: str, preferred: str | None = None) -> str:
    """The path of `name` (`preferred` first, then `$PATH`), or `ToolMissing` saying what to do."""
    if preferred and os.access(preferred, os.X_OK):
        return preferred
    found = shutil.which(name)
    if found is None:
        where = f"{preferred} or on PATH" if preferred else "on PATH"
        raise ToolMissing(f"{name} is not installed (looked for {where}): {SETUP_HINT}")
    return found


def require_tools() -> None:
    """Fail early, with the fix, when docker-registry or skopeo is missing."""
    find_tool("docker-registry", REGISTRY_BINARY)
    find_tool("skopeo")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RegistryServer:
    """A running `docker-registry serve`; `host` is `127.0.0.1:PORT`, `url` its base URL."""

    host: str
    storage: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate the registry by its PID and wait for it; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _registry_config(storage: Path, port: int) -> str:
    """The registry's configuration; JSON is YAML, so no quoting surprises with paths."""
    config = {
        "version": "0.1",
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    return json.dumps(config, indent=2) + "\n"


def start_registry(workdir: Path, *, ready_timeout: float = 10.0) -> RegistryServer:
    """Start the real registry with its storage and log in `workdir`; return once it serves /v2/."""
    binary = find_tool("docker-registry", REGISTRY_BINARY)
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    problem: str | None = "not started"
    for attempt in range(3):  # a free port can be taken between free_port() and the bind
        port = free_port()
        config = workdir / f"registry-{attempt}.json"
        config.write_text(_registry_config(storage, port))
        log_path = workdir / f"registry-{attempt}.log"
        log = log_path.open("wb")
        process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        server = RegistryServer(f"127.0.0.1:{port}", storage, process, log_path, log)
        problem = _wait_ready(server, ready_timeout)
        if problem is None:
            return server
        server.stop()
    raise RuntimeError(f"docker-registry did not start: {problem}")


def _wait_ready(server: RegistryServer, timeout: float) -> str | None:
    """None once `GET /v2/` answers 200; otherwise why not."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return f"exited with {server.process.returncode}:\n{server.log_tail()}"
            try:
                if client.get(f"{server.url}/v2/").status_code == 200:
                    return None
            except httpx.TransportError:
                pass
            time.sleep(0.01)  # readiness poll, not a wait for a result
    return f"no answer on {server.url}/v2/ within {timeout} s:\n{server.log_tail()}"


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {result.returncode}:\n{result.stderr}")
    return result.stdout


def skopeo_push(layout_dir: Path, tag: str, dest_ref: str, all: bool = False) -> None:
    """`skopeo copy oci:<layout_dir>:<tag> docker://<dest_ref>` over plain HTTP.

    `all=True` copies every platform of an index and keeps the digests (`--all --preserve-digests`);
    without it skopeo pushes only the host platform's child of a multi-arch tag.
    """
    command = [find_tool("skopeo"), "copy", "--quiet", "--dest-tls-verify=false"]
    if all:
        command += ["--all", "--preserve-digests"]
    _run([*command, f"oci:{layout_dir}:{tag}", f"docker://{dest_ref}"])


def skopeo_digest(ref: str) -> str:
    """The digest skopeo reports for `ref` (`skopeo inspect --format '{{.Digest}}'`)."""
    command = [find_tool("skopeo"), "inspect", "--tls-verify=false", f"docker://{ref}"]
    return _run([*command, "--format", "{{.Digest}}"]).strip()


@dataclass(frozen=True)
class Pushed:
    """An image pushed by `ImagePusher`: its reference and the digests the layout builder wrote."""

    ref: str
    digest: str
    platforms: Mapping[str, str] = field(default_factory=dict)


class ImagePusher:
    """Builds a deterministic image in `workdir` and pushes it to `registry` with skopeo."""

    def __init__(self, registry: RegistryServer, workdir: Path) -> None:
        self.registry = registry
        self.workdir = workdir
        self._count = 0

    def __call__(
        self,
        repository: str,
        tag: str,
        *,
        content: bytes = DEFAULT_CONTENT,
        multi_arch: bool = False,
    ) -> Pushed:
        """Push `repository:tag` (a layer holding `content`; an amd64+arm64 index if multi_arch)."""
        self._count += 1
        builder = LayoutBuilder(self.workdir / f"layout-{self._count}")
        ref = f"{self.registry.host}/{repository}:{tag}"
        if multi_arch:
            image = builder.multi_arch(tag, content=content)
            skopeo_push(builder.root, tag, ref, all=True)
            platforms = {p: d.digest for p, d in image.platforms.items()}
            return Pushed(ref, image.index.digest, platforms)
        manifest = builder.image(tag, content=content)
        skopeo_push(builder.root, tag, ref)
        return Pushed(ref, manifest.digest)


# -- scripted servers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A request a `ScriptedServer` received (header names in lower case)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    """What a `ScriptedServer` answers; `delay` seconds pass first (cut short by `close()`)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


Script = Callable[[Seen], Reply]


class _QuietServer(http.server.ThreadingHTTPServer):
    """No tracebacks on stderr when a client drops its connection."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class ScriptedServer:
    """A loopback HTTP/1.1 (keep-alive) server answering every request with `script(request)`.

    `requests` lists what it received, in order. Use it as a context manager, or call `close()`:
    that cuts pending delays short, closes open connections and joins every thread. A script that
    raises gets the client a 500, and the exception is raised again when the `with` block ends.
    """

    def __init__(self, script: Script) -> None:
        self.requests: list[Seen] = []
        self.errors: list[Exception] = []
        self._script = script
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = False  # server_close() joins them
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        """How many requests (of `method`, with a path starting with `path_prefix`) came in."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method) and r.path.startswith(path_prefix)
            )

    def close(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
        if exc is None and self.errors:
            raise AssertionError(f"the script of {self.url} raised: {self.errors[0]!r}") from self.errors[0]

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner._connections.add(self.connection)

            def finish(self) -> None:
                with owner._lock:
                    owner._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                with owner._lock:
                    owner.requests.append(seen)
                try:
                    reply = owner._script(seen)
                except Exception as exc:  # reported by __exit__
                    with owner._lock:
                        owner.errors.append(exc)
                    reply = Reply(500, body=f"script error: {exc!r}".encode())
                if reply.delay and owner._stopping.wait(reply.delay):
                    self.close_connection = True
                    return
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(reply.body)
                    self.wfile.flush()
                except OSError:  # the client gave up (a timeout test)
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _answer

        return Handler
