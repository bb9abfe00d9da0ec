"""The HTTP side of the `oci` plugin: one keep-alive client per registry, retries, and error mapping.

What it does: `Transport` owns the `httpx.Client` of one registry host (plain HTTP for loopback or
`insecure` entries, HTTPS otherwise; Docker Hub's `docker.io` is reached at `registry-1.docker.io`)
and sends requests with retries: 429 (honouring `Retry-After`, capped), 5xx, timeouts and connection
errors are retried with exponential backoff, then raise `RegistryUnavailable`. Bodies are read whole
and capped in size. `settings` parses the entry's `options:`; `unexpected` and `served_digest` turn
answers that are not what was asked for into `StellaError`s.

httpx is imported in the methods that use it: every Stella process imports this plugin at start-up,
most never reach a registry, and importing httpx would cost each of them about 0.08 s.

What it must not do: authenticate (that is `auth`), interpret manifests beyond hashing them, log or
report `Authorization` headers or bodies, print, or let an httpx exception escape.
"""

from __future__ import annotations

import email.utils
import hashlib
import importlib.metadata
import ipaddress
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from reconciler.api import DIGEST_RE, InvalidInput, RegistryUnavailable, StellaError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
"""The distribution spec's limit for manifests; the default cap on any body read."""

_DOCKER_HUB: Final = "docker.io"
_DOCKER_HUB_API: Final = "registry-1.docker.io"


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (`host` without port or brackets)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def package_version() -> str:
    """The installed version of `stella-oci` (`0+unknown` when it is not installed)."""
    try:
        return importlib.metadata.version("stella-oci")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Settings:
    """The `options:` of a registry entry (see `settings`)."""

    timeout: float = 10.0
    attempts: int = 4
    backoff: float = 0.2
    max_delay: float = 10.0


def settings(host: str, raw: Mapping[str, object]) -> Settings:
    """Parse the entry's `options:`; `InvalidInput` naming `host` for unknown or bad values."""
    known = ("attempts", "backoff", "max_delay", "timeout")
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise InvalidInput(
            f"registry {host}: unknown option(s) {', '.join(unknown)} (known: {', '.join(known)})"
        )
    defaults = Settings()

    def number(key: str, default: float, *, positive: bool) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"registry {host}: option {key} must be a number, not {value!r}")
        if value < 0 or (positive and value == 0):
            bound = "greater than 0" if positive else "0 or more"
            raise InvalidInput(f"registry {host}: option {key} must be {bound}, not {value!r}")
        return float(value)

    attempts = raw.get("attempts", defaults.attempts)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise InvalidInput(f"registry {host}: option attempts must be an integer >= 1, not {attempts!r}")
    return Settings(
        timeout=number("timeout", defaults.timeout, positive=True),
        attempts=attempts,
        backoff=number("backoff", defaults.backoff, positive=False),
        max_delay=number("max_delay", defaults.max_delay, positive=False),
    )


@dataclass(frozen=True)
class Reply:
    """A finished response: status, headers and (for GET) the body, already read and closed."""

    status: int
    reason: str
    headers: httpx.Headers
    body: bytes


@dataclass(frozen=True)
class Failure:
    """Why one try got no usable answer; retrying may help."""

    reason: str
    """`HTTP 503 Service Unavailable`, `timed out after 10 s (ReadTimeout)`, `connection failed (…)`."""
    status: int | None = None
    """The status of a 429 or 5xx answer; None when there was no answer."""
    retry_after: float | None = None
    """The answer's `Retry-After`, in seconds."""
    exc: Exception | None = None
    """The httpx exception, when there was no answer."""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def header_digest(headers: httpx.Headers) -> str | None:
    """The `Docker-Content-Digest` header, when it is a well-formed sha256 digest."""
    value = headers.get("docker-content-digest", "").strip()
    return value if DIGEST_RE.match(value) else None


def registry_errors(body: bytes) -> str:
    """`CODE: message` pairs of a distribution error body, or '' when there are none."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = [
        f"{error.get('code', '?')}: {error.get('message', '')}".strip()
        for error in errors
        if isinstance(error, dict)
    ]
    return "; ".join(parts)[:300]


def unexpected(host: str, reply: Reply, what: str) -> StellaError:
    """An answer that is neither success nor a known case: `InvalidInput` for 4xx, else unavailable."""
    said = registry_errors(reply.body)
    message = f"registry {host} answered HTTP {reply.status} {reply.reason} for {what}" + (
        f": {said}" if said else ""
    )
    if 400 <= reply.status < 500:
        return InvalidInput(message)
    return RegistryUnavailable(message)


def served_digest(host: str, reply: Reply, what: str) -> str:
    """The sha256 of a manifest reply's bytes, checked against the digest the registry claims."""
    digest = "sha256:" + hashlib.sha256(reply.body).hexdigest()
    claimed = header_digest(reply.headers)
    if claimed is not None and claimed != digest:
        raise RegistryUnavailable(
            f"registry {host} served a manifest for {what} whose sha256 is {digest}, but said it is {claimed}"
        )
    return digest


class Transport:
    """One keep-alive `httpx.Client` for one registry host, with retries. Safe to share between threads."""

    def __init__(self, host: str, settings: Settings, *, loopback: bool, insecure: bool) -> None:
        import httpx

        self.host = host
        self.settings = settings
        scheme = "http" if loopback or insecure else "https"
        endpoint = _DOCKER_HUB_API if host == _DOCKER_HUB else host
        self.client = httpx.Client(
            base_url=f"{scheme}://{endpoint}",
            timeout=settings.timeout,
            follow_redirects=True,
            trust_env=not loopback,  # no proxy between us and a loopback registry
            headers={"User-Agent": f"stella-oci/{package_version()}"},
        )

    @property
    def base_url(self) -> httpx.URL:
        return self.client.base_url

    def close(self) -> None:
        self.client.close()

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        delay: float = self.settings.backoff * 2.0 ** (attempt - 1)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.settings.max_delay)

    def attempt(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        what: str,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        limit: int = MAX_MANIFEST_BYTES,
        timeout: float | None = None,
    ) -> Reply | Failure:
        """One try: the reply, or a `Failure` worth retrying (429, 5xx, a timeout, a failed connection).

        Raises `RegistryUnavailable` only for what no retry can fix (an invalid URL, a body over
        `limit`); never httpx's exceptions. `timeout` defaults to the entry's option.
        """
        import httpx

        timeout = self.settings.timeout if timeout is None else timeout
        try:
            request = self.client.build_request(
                method, url, headers=headers, params=params, data=data, timeout=timeout
            )
            response = self.client.send(request, stream=True)
            try:
                status = response.status_code
                if status == 429 or status >= 500:
                    reason = f"HTTP {status} {response.reason_phrase}".rstrip()
                    return Failure(reason, status, _retry_after(response.headers.get("retry-after")))
                body = b"" if method == "HEAD" else self._read_capped(response, what, limit)
                return Reply(status, response.reason_phrase, response.headers, body)
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            return Failure(f"timed out after {timeout:g} s ({type(exc).__name__})", exc=exc)
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            return Failure(f"connection failed ({exc or type(exc).__name__})", exc=exc)
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            raise RegistryUnavailable(f"registry {self.host} could not be asked about {what}: {exc}") from exc

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        what: str,
        doing: str = "resolving",
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        limit: int = MAX_MANIFEST_BYTES,
        attempts: int | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Send with retries on 429, 5xx, timeouts and connection errors; never raises httpx's.

        `attempts` and `timeout` default to the entry's options. `doing` and `what` name the
        operation in errors ("resolving" `ref`); `limit` caps the body.
        """
        attempts = self.settings.attempts if attempts is None else attempts
        last = Failure("no attempt made")
        for attempt in range(1, attempts + 1):
            outcome = self.attempt(
                method,
                url,
                headers=headers,
                what=what,
                params=params,
                data=data,
                limit=limit,
                timeout=timeout,
            )
            if isinstance(outcome, Reply):
                return outcome
            last = outcome
            if attempt < attempts:
                delay = self._delay(attempt, last.retry_after)
                log.info(
                    "registry %s: %s for %s; retrying in %.2f s (attempt %d of %d)",
                    self.host,
                    last.reason,
                    what,
                    delay,
                    attempt,
                    attempts,
                )
                time.sleep(delay)
        plural = "attempt" if attempts == 1 else "attempts"
        raise RegistryUnavailable(
            f"registry {self.host} is unavailable: {doing} {what} failed with {last.reason} "
            f"after {attempts} {plural}"
        ) from last.exc

    def _read_capped(self, response: httpx.Response, what: str, limit: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > limit:
                raise RegistryUnavailable(f"registry {self.host} answered more than {limit} bytes for {what}")
            chunks.append(chunk)
        return b"".join(chunks)
