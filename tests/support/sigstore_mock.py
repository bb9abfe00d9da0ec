"""A Sigstore instance on loopback for offline keyless tests: Fulcio and Rekor from `@sigstore/mock`.

`start_mock_sigstore(workdir)` runs `tests/js/mock-sigstore-server.js` with Node on 127.0.0.1 (a free
port), and returns once the server has written its ClientTrustConfig (`MockSigstore.trust_config`) and
printed its URL. `MockSigstore.stop()` ends it by its PID (closing its stdin first, which makes it exit
by itself) and waits for it; nothing is left running. `dummy_token(...)` makes the OIDC identity token
the stand-in accepts: an HS256 JWT with a dummy secret (the mock never checks it; sigstore-python checks
only its claims).

Node or `tests/js/node_modules/@sigstore/mock` missing raises `MockUnavailable`, whose message says to
run `make setup`: tests must fail on it, never skip. For tests only: the CA issues a certificate to
whoever asks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import selectors
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

JS = Path(__file__).resolve().parents[1] / "js"
SERVER = JS / "mock-sigstore-server.js"
SETUP_HINT = "run `make setup` (or `npm ci --no-audit --no-fund --prefix tests/js`)"


class MockUnavailable(RuntimeError):
    """Node or the npm packages the stand-in needs are not installed."""


def node_binary() -> str:
    """The `node` program, with `@sigstore/mock` installed in `tests/js`, or `MockUnavailable`."""
    node = shutil.which("node")
    if node is None:
        raise MockUnavailable(f"node is not installed: {SETUP_HINT}")
    if not (JS / "node_modules" / "@sigstore" / "mock").is_dir():
        raise MockUnavailable(f"{JS / 'node_modules' / '@sigstore' / 'mock'} is missing: {SETUP_HINT}")
    return node


@dataclass
class MockSigstore:
    """A running stand-in: `url` (http://127.0.0.1:PORT) and the ClientTrustConfig it wrote."""

    url: str
    trust_config: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def trusted_root(self) -> bytes:
        """The trusted root part of the trust config, as a `trusted_root.json` file holds it."""
        config = json.loads(self.trust_config.read_text(encoding="utf-8"))
        return json.dumps(config["trustedRoot"], indent=2).encode("utf-8") + b"\n"

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """End the server by its PID and wait for it; idempotent."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def start_mock_sigstore(workdir: Path, *, ready_timeout: float = 30.0) -> MockSigstore:
    """Start the stand-in with its trust config and log in `workdir`; return once it is listening."""
    node = node_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    trust_config = workdir / "trust_config.json"
    log_path = workdir / "mock-sigstore.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [node, str(SERVER), str(trust_config), "0"],
        cwd=JS,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    server = MockSigstore("", trust_config, process, log_path, log)
    try:
        server.url = _ready_line(process, ready_timeout)
    except RuntimeError as exc:
        server.stop()
        raise RuntimeError(f"{exc}\n{server.log_tail()}") from None
    if not server.url.startswith("http://127.0.0.1:") or not trust_config.is_file():
        server.stop()
        raise RuntimeError(f"mock-sigstore-server said {server.url!r}:\n{server.log_tail()}")
    return server


def _ready_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line the server prints (its URL), waiting for it at most `timeout` seconds."""
    assert process.stdout is not None
    line = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise RuntimeError(f"mock-sigstore-server printed no URL within {timeout} s")
            chunk = os.read(process.stdout.fileno(), 256)
            if not chunk:
                raise RuntimeError(f"mock-sigstore-server exited with {process.wait()} before it was ready")
            line += chunk
    return line.decode("utf-8").strip()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def dummy_token(
    subject: str,
    issuer: str,
    *,
    audience: str = "sigstore",
    issued_at: int | None = None,
    lifetime: int = 86_400,
) -> str:
    """An HS256 JWT with `iss`, `sub`, `aud`, `iat`, `exp`, signed with a dummy secret. Valid for a day
    by default: tokens made while pytest collects (in `parametrize`) must outlive the whole run."""
    now = int(time.time()) if issued_at is None else issued_at
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"iss": issuer, "sub": subject, "aud": audience, "iat": now, "exp": now + lifetime}
    body = _b64url(json.dumps(claims).encode())
    signature = hmac.new(b"stella-test-secret", f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64url(signature)}"
