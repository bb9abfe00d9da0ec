"""A registry that lies: a loopback HTTP proxy that serves another manifest's bytes for a pinned digest.

`TamperProxy(upstream, pinned, substitute)` listens on 127.0.0.1 and a free port and forwards every
request to the registry at `upstream` (`127.0.0.1:PORT`, plain HTTP), with every header line as sent
(a client may send several `Accept` lines, and the registry refuses OCI manifests when only the last
reaches it). A request for `/v2/<name>/manifests/<pinned>` is answered instead with the bytes (and
`Content-Type`) of `/v2/<name>/manifests/<substitute>`, with `Docker-Content-Digest` set to the lying
`pinned` digest (`header="pinned"`) or to the true `substitute` one (`header="true"`). `tampered` counts
the requests it answered that way. An engine pulling `127.0.0.1:<proxy port>/<name>@<pinned>` through
it must refuse the image.

With `stall_blobs=True` it also holds every blob download until `release` is set, after setting
`blob_requested`: a test knows a pull is under way (manifest read, layers being fetched) and can act
at exactly that moment. With `pinned=""` nothing is tampered with.

For tests only: one upstream connection per request, whole bodies in memory, GET and HEAD.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from types import TracebackType
from typing import Any, Literal

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up is not a test failure


class TamperProxy:
    """See the module docstring; use it as a context manager, or call `close()`."""

    def __init__(
        self,
        upstream: str,
        pinned: str,
        substitute: str,
        *,
        header: Literal["pinned", "true"] = "pinned",
        stall_blobs: bool = False,
    ) -> None:
        self.upstream = upstream
        self.pinned = pinned
        self.substitute = substitute
        self.header = header
        self.tampered = 0
        self.stall_blobs = stall_blobs
        self.blob_requested = threading.Event()
        self.release = threading.Event()
        self.seen: list[str] = []
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> TamperProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Ask upstream; the status, headers (hop-by-hop dropped) and whole body."""
        connection = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    connection.putheader(name, value)
            if body:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body or None)
            response = connection.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            return response.status, kept, data
        finally:
            connection.close()

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path
                prefix, _, reference = path.rpartition("/manifests/")
                tamper = bool(prefix) and bool(owner.pinned) and reference == owner.pinned
                if owner.stall_blobs and self.command == "GET" and "/blobs/" in path:
                    owner.blob_requested.set()
                    owner.release.wait(timeout=120)
                with owner._lock:
                    owner.seen.append(f"{self.command} {path}")
                if tamper:
                    path = f"{prefix}/manifests/{owner.substitute}"
                status, headers, data = owner._forward(self.command, path, list(self.headers.items()), body)
                if tamper and status == 200:
                    lie = owner.pinned if owner.header == "pinned" else owner.substitute
                    headers = [
                        (k, v) for k, v in headers if k.lower() not in ("docker-content-digest", "etag")
                    ]
                    headers.append(("Docker-Content-Digest", lie))
                    with owner._lock:
                        owner.tampered += 1
                self.send_response(status)
                for name, value in headers:
                    if name.lower() != "content-length" or self.command == "HEAD":
                        self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = _answer

        return Handler
