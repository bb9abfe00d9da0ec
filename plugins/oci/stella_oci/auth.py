"""Authentication to a registry: credentials, `WWW-Authenticate` challenges, Bearer tokens and Basic.

What it does: `credentials_from_reference` reads an entry's `credentials:` (`env:NAME` or `file:/path`,
holding `user:password`); `docker_config_credentials` reads Docker's `config.json` (`$DOCKER_CONFIG`
or `~/.docker`), `auths[<host>]` (`auth`, or `identitytoken` used as an OAuth2 refresh token).
`Authenticator.request` sends one request through a `Transport` and, on 401, learns the challenge:
Bearer (a token from the realm for the request's scope, anonymous or with credentials, cached per
scope until it expires) or Basic; then it tries once more. Still 401, or 403: `InvalidInput`, since
wrong or missing credentials are configuration and retrying will not fix them.

httpx is imported in the method that uses it: every Stella process imports this plugin at start-up,
most never reach a registry, and importing httpx would cost each of them about 0.08 s.

What it must not do: log or report secrets (passwords, tokens, `Authorization` headers): an error
names where credentials came from (`env:NAME`, a file path), never their value; send credentials to a
plain-HTTP token endpoint that is not on loopback unless the entry is `insecure`; retry by itself
(that is `transport`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from reconciler.api import InvalidInput, RegistryUnavailable

from .transport import MAX_MANIFEST_BYTES, Reply, Transport, is_loopback

DOCKER_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
"""Names of Docker Hub that Docker's `auths` may use for it."""

_ENV_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHALLENGE_TOKEN_RE: Final = re.compile(
    r"""([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?"""
)


# -- credentials -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """User credentials; `source` says where they came from and is the only part ever shown."""

    source: str
    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def basic(self) -> str:
        """The `Authorization` value of HTTP Basic with these credentials."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def _split_user_password(source: str, text: str) -> Credentials:
    username, sep, password = text.rstrip("\r\n").partition(":")
    if not sep or not username:
        raise InvalidInput(f"credentials {source}: expected the form user:password")
    return Credentials(source, username, password)


def credentials_from_reference(reference: str) -> Credentials:
    """The credentials an entry's `credentials:` names (`env:NAME` or `file:/path`)."""
    kind, _, rest = reference.partition(":")
    if kind == "env" and _ENV_NAME_RE.match(rest):
        value = os.environ.get(rest)
        if value is None:
            raise InvalidInput(f"credentials {reference}: environment variable {rest} is not set")
        return _split_user_password(reference, value)
    if kind == "file" and rest:
        try:
            text = Path(rest).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise InvalidInput(f"credentials {reference}: cannot read the file ({reason})") from exc
        return _split_user_password(reference, text)
    raise InvalidInput(f"credentials reference {reference!r} is not understood: use env:NAME or file:/path")


def _docker_config_path() -> Path | None:
    base = os.environ.get("DOCKER_CONFIG")
    if base:
        return Path(base) / "config.json"
    try:
        return Path.home() / ".docker" / "config.json"
    except RuntimeError:  # no home directory
        return None


def _auth_key_host(key: str) -> str:
    """`https://host:5000/v1/` -> `host:5000` (Docker's `auths` keys come in several spellings)."""
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.split("/", 1)[0].lower()


def docker_config_credentials(registry: str) -> Credentials | None:
    """The credentials Docker's `config.json` holds for `registry`, or None."""
    path = _docker_config_path()
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput("cannot read the Docker configuration", file=str(path)) from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"the Docker configuration is not valid JSON ({exc})", file=str(path)) from exc
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = DOCKER_HUB_ALIASES if registry in DOCKER_HUB_ALIASES else {registry.lower()}
    for key, entry in sorted(auths.items()):
        if not isinstance(entry, dict) or _auth_key_host(str(key)) not in wanted:
            continue
        source = f"{path} (auths[{key!r}])"
        username, password = entry.get("username"), entry.get("password")
        auth = entry.get("auth")
        if isinstance(auth, str) and auth:
            try:
                decoded = base64.b64decode(auth, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError) as exc:
                message = f"auths[{key!r}].auth is not base64 of user:password"
                raise InvalidInput(message, file=str(path)) from exc
            username, _, password = decoded.partition(":")
        token = entry.get("identitytoken")
        if isinstance(token, str) and token:
            name = username if isinstance(username, str) else ""
            return Credentials(source, name, "", identity_token=token)
        if isinstance(username, str) and username and isinstance(password, str):
            return Credentials(source, username, password)
    return None


# -- challenges --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer" or "basic"
    params: Mapping[str, str]


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Parse `WWW-Authenticate` values (RFC 7235: a scheme, then `name=value` parameters)."""
    found: list[tuple[str, dict[str, str]]] = []
    for value in values:
        for match in _CHALLENGE_TOKEN_RE.finditer(value):
            name, raw = match.group(1), match.group(2)
            if raw is None:
                found.append((name.lower(), {}))
            elif found:
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                found[-1][1][name.lower()] = raw
    return [Challenge(scheme, params) for scheme, params in found]


def usable_challenge(reply: Reply) -> Challenge | None:
    """The challenge of a 401 to answer: Bearer if offered, else Basic; None when neither is."""
    challenges = [
        c
        for c in parse_challenges(reply.headers.get_list("www-authenticate"))
        if c.scheme in ("bearer", "basic")
    ]
    return next((c for c in challenges if c.scheme == "bearer"), challenges[0] if challenges else None)


@dataclass
class _Token:
    value: str = field(repr=False)
    expires: float  # time.monotonic()


# -- the authenticator -------------------------------------------------------------------------


class Authenticator:
    """The authentication state of one registry: its challenge, tokens per scope, the credentials.

    Thread-safe: a lock guards the state. `explicit` credentials (the entry's `credentials:`) win;
    otherwise Docker's `config.json` is read once, when first needed.
    """

    def __init__(self, transport: Transport, explicit: Credentials | None, *, insecure: bool) -> None:
        self._transport = transport
        self._host = transport.host
        self._insecure = insecure
        self._explicit = explicit
        self._docker_credentials: Credentials | None = None
        self._docker_credentials_loaded = False
        self._challenge: Challenge | None = None
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()

    def credentials(self) -> Credentials | None:
        if self._explicit is not None:
            return self._explicit
        with self._lock:
            if not self._docker_credentials_loaded:
                self._docker_credentials = docker_config_credentials(self._host)
                self._docker_credentials_loaded = True
            return self._docker_credentials

    def credentials_error(self, status: int, what: str, scope: str) -> InvalidInput:
        """Credentials missing, or refused (`status`), for `what`; names their source, never them."""
        credentials = self.credentials()
        if credentials is None:
            return InvalidInput(
                f"registry {self._host} requires credentials to pull {what} (HTTP {status}) and "
                "none are configured: give its registry entry `credentials: env:NAME` or "
                "`credentials: file:/path` (holding user:password), or log in with docker"
            )
        allow = f" and allow {scope}" if scope else ""
        return InvalidInput(
            f"registry {self._host} refused the credentials from {credentials.source} for {what} "
            f"(HTTP {status}): check that they are valid{allow}"
        )

    def request(
        self,
        method: str,
        path: str,
        scope: str,
        what: str,
        *,
        accept: str,
        reauthenticated: bool = False,
        doing: str = "resolving",
        limit: int = MAX_MANIFEST_BYTES,
    ) -> Reply:
        """One request with authentication: on 401, learn the challenge, authenticate, try again.

        `doing` and `what` name the operation in errors ("resolving" `ref`); `limit` caps the body.
        """
        headers = {"Accept": accept}
        authorization = self._authorization(scope, what, doing)
        if authorization is not None:
            headers["Authorization"] = authorization
        reply = self._transport.send(method, path, headers=headers, what=what, doing=doing, limit=limit)
        if reply.status == 403 or (reply.status == 401 and reauthenticated):
            raise self.credentials_error(reply.status, what, scope)
        if reply.status != 401:
            return reply
        challenge = usable_challenge(reply)
        if challenge is None:
            raise InvalidInput(
                f"registry {self._host} answered HTTP 401 for {what} without a Bearer or Basic "
                "WWW-Authenticate challenge"
            )
        with self._lock:
            self._challenge = challenge
            self._tokens.pop(scope, None)
        if challenge.scheme == "basic" and self.credentials() is None:
            raise self.credentials_error(401, what, scope)
        return self.request(
            method, path, scope, what, accept=accept, reauthenticated=True, doing=doing, limit=limit
        )

    def _authorization(self, scope: str, what: str, doing: str) -> str | None:
        with self._lock:
            challenge = self._challenge
            token = self._tokens.get(scope)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self._basic()
        if token is None or token.expires <= time.monotonic():
            token = self._fetch_token(challenge, scope, what, doing)
            with self._lock:
                self._tokens[scope] = token
        return f"Bearer {token.value}"

    def login(self, challenge: Challenge, what: str, *, timeout: float | None) -> str | None:
        """The `Authorization` for `/v2/` under `challenge` with the credentials, as `docker login` gets
        it: Basic, or a Bearer token fetched once (one attempt, no scope), not cached. None when the
        credentials cannot answer it (none, or an identity token for Basic). Raises like a request.
        """
        if challenge.scheme == "basic":
            return self._basic()
        token = self._fetch_token(challenge, "", what, "checking", attempts=1, timeout=timeout)
        return f"Bearer {token.value}"

    def _basic(self) -> str | None:
        """Basic `Authorization` with the credentials; None without (an identity token is not one)."""
        credentials = self.credentials()
        if credentials is None or credentials.identity_token is not None:
            return None
        return credentials.basic()

    def _fetch_token(
        self,
        challenge: Challenge,
        scope: str,
        what: str,
        doing: str,
        *,
        attempts: int | None = None,
        timeout: float | None = None,
    ) -> _Token:
        import httpx

        realm = challenge.params.get("realm", "")
        try:
            realm_url = httpx.URL(realm)
        except httpx.InvalidURL as exc:
            raise RegistryUnavailable(
                f"registry {self._host} sent a Bearer challenge with an invalid realm {realm!r}"
            ) from exc
        if realm_url.scheme not in ("http", "https") or not realm_url.host:
            raise RegistryUnavailable(
                f"registry {self._host} sent a Bearer challenge with an unusable realm {realm!r}"
            )
        credentials = self.credentials()
        plain = realm_url.scheme != "https" and not is_loopback(realm_url.host)
        if credentials is not None and plain and not self._insecure:
            raise InvalidInput(
                f"registry {self._host}: refusing to send credentials to the non-HTTPS token "
                f"endpoint {realm} (mark the registry insecure to allow it)"
            )
        service = challenge.params.get("service")
        fields = {**({"scope": scope} if scope else {}), **({"service": service} if service else {})}
        headers = {"Accept": "application/json"}
        send = functools.partial(self._transport.send, attempts=attempts, timeout=timeout)
        if credentials is not None and credentials.identity_token is not None:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": "stella",
                **fields,
            }
            reply = send("POST", realm, headers=headers, what=what, doing=doing, data=form)
        else:
            if credentials is not None:
                headers["Authorization"] = credentials.basic()
            reply = send("GET", realm, headers=headers, what=what, doing=doing, params=fields)
        if reply.status in (401, 403):
            raise self.credentials_error(reply.status, what, scope)
        if reply.status != 200:
            raise RegistryUnavailable(
                f"the token endpoint of registry {self._host} answered HTTP {reply.status} "
                f"{reply.reason} for {what}"
            )
        try:
            data = json.loads(reply.body)
        except ValueError:
            data = None
        value = None
        expires_in: object = None
        if isinstance(data, dict):
            value = data.get("token") or data.get("access_token")
            expires_in = data.get("expires_in")
        if not isinstance(value, str) or not value:
            raise RegistryUnavailable(
                f"the token endpoint of registry {self._host} answered without a token for {what}"
            )
        lifetime = expires_in if isinstance(expires_in, int) and expires_in > 0 else 60
        return _Token(value, time.monotonic() + max(1.0, lifetime - 5.0))
