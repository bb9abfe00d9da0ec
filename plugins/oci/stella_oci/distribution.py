"""Resolve image tags to manifest digests, and read what is attached to images, through the OCI
distribution API over HTTP(S).

What it does: for one configured registry host, `resolve(ref)` asks
`HEAD /v2/<repository>/manifests/<tag or digest>` (with an `Accept` listing the OCI index, OCI
manifest, Docker manifest list and Docker v2 manifest media types: registry 2.8 answers 404 to OCI
content without them) and returns the `Docker-Content-Digest`. When that header is missing, or HEAD
is refused, it GETs the manifest and hashes the exact bytes. A multi-arch tag resolves to the digest
of its index, never of a platform child. A reference that already has a digest is checked to exist
and returned. Every request goes through one keep-alive `httpx.Client` per registry, which is safe
to share between the threads the core resolves from.

For gates that read artifacts attached to an image (signature bundles), three small reads: `manifest`
(exact bytes and media type, checked against the digest), `blob` (a small blob, capped in size and
checked against its digest) and `referrers` (OCI 1.1: the referrers API, or, where the registry has
none, as distribution 2.8 has not, the referrers tag schema `sha256-<hex>`).

Transport: like Docker, a registry on loopback (127.0.0.0/8, localhost, ::1) is reached over plain
HTTP with no configuration; any other over HTTPS, unless its entry says `insecure: true`.
Authentication follows the registry's `WWW-Authenticate` challenge: Bearer (a token from the realm
for `repository:<name>:pull`, anonymous or with credentials, cached per scope until it expires) or
Basic. Credentials come from the entry's `credentials:` reference (`env:NAME` or `file:/path`,
holding `user:password`), else from Docker's `config.json` (`$DOCKER_CONFIG` or `~/.docker`),
`auths[<host>]` (`auth`, or `identitytoken` used as an OAuth2 refresh token).

Errors (all `StellaError`s; no httpx exception or traceback escapes):

- the repository, tag or digest does not exist: `InvalidInput`;
- still 401/403 after authenticating: `InvalidInput` too (exit 2). The choice is deliberate:
  wrong or missing credentials are configuration, and retrying later will not fix them. The
  message names the credentials' *source* (`env:NAME`, a file path), never their value;
- 429 (honouring `Retry-After`, capped), 5xx, timeouts and connection errors are retried with
  exponential backoff, then raise `RegistryUnavailable` naming the registry, the reference, the last
  status or error and the number of attempts;
- a registry that serves bytes not matching the digest it claims: `RegistryUnavailable`.

Options (`options:` of the registry entry): `timeout` (seconds per network operation, default 10),
`attempts` (tries per request, default 4), `backoff` (first retry delay in seconds, doubled on every
retry, default 0.2), `max_delay` (cap on any single wait, including `Retry-After`, default 10).

What it must not do: pull image layers (`blob` is for small artifacts only); interpret manifests
beyond hashing them and listing an index's descriptors; write to a registry; remember digests between
calls (tags move; the core resolves a tag once per release); print or exit; log or report secrets
(credentials, tokens, `Authorization` headers).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import importlib.metadata
import ipaddress
import json
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final

import httpx

from reconciler.errors import InvalidInput, PluginError, RegistryUnavailable, StellaError
from reconciler.protocols import FileSource, PluginManifest, RegistryOptions
from reconciler.reference import DIGEST_RE, ImageRef, ReferenceError, parse

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPES: Final[tuple[str, ...]] = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
"""The manifest media types asked for, multi-arch first: a multi-arch tag resolves to its index."""

_ACCEPT: Final = ", ".join(MANIFEST_MEDIA_TYPES)
_OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
_MAX_REFERRER_PAGES: Final = 20
_MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024  # the distribution spec's limit for manifests
_DOCKER_HUB: Final = "docker.io"
_DOCKER_HUB_API: Final = "registry-1.docker.io"
_DOCKER_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_ENV_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHALLENGE_TOKEN_RE: Final = re.compile(
    r"""([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?"""
)


def _is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (`host` without port or brackets)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _package_version() -> str:
    try:
        return importlib.metadata.version("stella-oci")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class _Settings:
    timeout: float = 10.0
    attempts: int = 4
    backoff: float = 0.2
    max_delay: float = 10.0


def _settings(host: str, raw: Mapping[str, object]) -> _Settings:
    known = ("attempts", "backoff", "max_delay", "timeout")
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise InvalidInput(
            f"registry {host}: unknown option(s) {', '.join(unknown)} (known: {', '.join(known)})"
        )
    defaults = _Settings()

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
    return _Settings(
        timeout=number("timeout", defaults.timeout, positive=True),
        attempts=attempts,
        backoff=number("backoff", defaults.backoff, positive=False),
        max_delay=number("max_delay", defaults.max_delay, positive=False),
    )


@dataclass(frozen=True)
class _Credentials:
    """User credentials; `source` says where they came from and is the only part ever shown."""

    source: str
    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)


def _split_user_password(source: str, text: str) -> _Credentials:
    username, sep, password = text.rstrip("\r\n").partition(":")
    if not sep or not username:
        raise InvalidInput(f"credentials {source}: expected the form user:password")
    return _Credentials(source, username, password)


def _credentials_from_reference(reference: str) -> _Credentials:
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


def _docker_config_credentials(registry: str) -> _Credentials | None:
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
    wanted = _DOCKER_HUB_ALIASES if registry in _DOCKER_HUB_ALIASES else {registry.lower()}
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
            return _Credentials(source, name, "", identity_token=token)
        if isinstance(username, str) and username and isinstance(password, str):
            return _Credentials(source, username, password)
    return None


@dataclass(frozen=True)
class _Challenge:
    scheme: str  # lower case: "bearer" or "basic"
    params: Mapping[str, str]


def _parse_challenges(values: list[str]) -> list[_Challenge]:
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
    return [_Challenge(scheme, params) for scheme, params in found]


@dataclass
class _Token:
    value: str = field(repr=False)
    expires: float  # time.monotonic()


@dataclass(frozen=True)
class _Reply:
    """A finished response: status, headers and (for GET) the body, already read and closed."""

    status: int
    reason: str
    headers: httpx.Headers
    body: bytes


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


def _header_digest(headers: httpx.Headers) -> str | None:
    value = headers.get("docker-content-digest", "").strip()
    return value if DIGEST_RE.match(value) else None


def _registry_errors(body: bytes) -> str:
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


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor, as an image index lists it (e.g. one referrer)."""

    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)


def _descriptor(entry: object) -> Descriptor | None:
    """A descriptor from one `manifests[]` entry, or None when it is not a well-formed sha256 one."""
    if not isinstance(entry, dict):
        return None
    media_type, digest, size = entry.get("mediaType"), entry.get("digest"), entry.get("size")
    artifact_type, annotations = entry.get("artifactType"), entry.get("annotations", {})
    if not isinstance(media_type, str) or not isinstance(digest, str) or not DIGEST_RE.match(digest):
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return None
    if artifact_type is not None and not isinstance(artifact_type, str):
        return None
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        return None
    return Descriptor(media_type, digest, size, artifact_type, dict(annotations))


def _media_type(reply: _Reply) -> str:
    """A manifest's media type: the `Content-Type` it was served with, else its own `mediaType`."""
    header = str(reply.headers.get("content-type", "")).partition(";")[0].strip()
    if header and header not in ("application/octet-stream", "application/json", "text/plain"):
        return header
    try:
        data = json.loads(reply.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return header
    own = data.get("mediaType") if isinstance(data, dict) else None
    return own if isinstance(own, str) else header


def _next_link(headers: httpx.Headers) -> str | None:
    """The `rel="next"` target of a `Link` header (the referrers API's pagination), if any."""
    for value in headers.get_list("link"):
        for part in value.split(","):
            target, _, params = part.partition(";")
            target = target.strip()
            if (
                target.startswith("<")
                and target.endswith(">")
                and re.search(r"""\brel\s*=\s*"?next"?""", params)
            ):
                return target[1:-1]
    return None


class DistributionRegistry:
    """A `Registry` for one host speaking the OCI distribution API.

    Thread-safe: one keep-alive client, a lock around the auth state. Close it when done.
    """

    def __init__(self, options: RegistryOptions) -> None:
        host = options.host
        try:
            probe = parse(f"{host}/probe")
        except ReferenceError as exc:
            raise InvalidInput(f"registry host {host!r} is not a valid registry host") from exc
        if probe.registry != host:
            raise InvalidInput(
                f"registry host {host!r} is not a registry host (expected host[:port], "
                "with a '.' or ':' in it, or localhost)"
            )
        self._host = host
        self._settings = _settings(host, options.options)
        self._insecure = options.insecure
        self._explicit = _credentials_from_reference(options.credentials) if options.credentials else None
        self._docker_credentials: _Credentials | None = None
        self._docker_credentials_loaded = False
        self._challenge: _Challenge | None = None
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()
        self._closed = False
        scheme = "http" if probe.is_loopback or options.insecure else "https"
        endpoint = _DOCKER_HUB_API if host == _DOCKER_HUB else host
        self._client = httpx.Client(
            base_url=f"{scheme}://{endpoint}",
            timeout=self._settings.timeout,
            follow_redirects=True,
            trust_env=not probe.is_loopback,  # no proxy between us and a loopback registry
            headers={"User-Agent": f"stella-oci/{_package_version()}"},
        )

    @property
    def url(self) -> str:
        """The base URL requests go to (`http://127.0.0.1:5000`, `https://registry.example.com`)."""
        return str(self._client.base_url).rstrip("/")

    def __enter__(self) -> DistributionRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the keep-alive connections. Idempotent."""
        with self._lock:
            self._closed = True
        self._client.close()

    def resolve(self, ref: ImageRef) -> str:
        """The `sha256:` digest `ref`'s tag names now (or `ref`'s digest, once checked to exist)."""
        reference = self._reference(ref)
        path = f"/v2/{ref.repository}/manifests/{reference}"
        scope = f"repository:{ref.repository}:pull"
        what = str(ref)

        head = self._request("HEAD", path, scope, what)
        if head.status == 200:
            digest = _header_digest(head.headers)
            if digest is not None:
                return self._checked(ref, digest)
        # No usable digest header, HEAD refused, or not found: GET tells us more.
        got = self._request("GET", path, scope, what)
        if got.status == 200:
            return self._checked(ref, self._served_digest(got, what))
        if got.status == 404:
            raise self._missing(ref, scope, got)
        raise self._unexpected(got, what)

    def manifest(self, ref: ImageRef) -> tuple[bytes, str]:
        """The manifest `ref` names (its digest if it has one, else its tag): exact bytes and media type.

        The bytes are checked against `ref`'s digest, and against the digest the registry claims.
        The media type is the response's `Content-Type`, else the manifest's own `mediaType` ('' when
        neither says). A missing manifest is `InvalidInput`.
        """
        reference = self._reference(ref)
        path = f"/v2/{ref.repository}/manifests/{reference}"
        scope = f"repository:{ref.repository}:pull"
        what = str(ref)
        got = self._request("GET", path, scope, what, doing="fetching the manifest of")
        if got.status == 404:
            raise self._missing(ref, scope, got)
        if got.status != 200:
            raise self._unexpected(got, what)
        digest = self._served_digest(got, what)
        self._checked(ref, digest)
        return got.body, _media_type(got)

    def blob(self, repository: str, digest: str, *, max_bytes: int = _MAX_MANIFEST_BYTES) -> bytes:
        """The bytes of blob `digest` in `repository`, checked to hash to `digest`.

        Meant for small blobs (configs, signature bundles): a blob larger than `max_bytes` (4 MiB by
        default) is refused with `RegistryUnavailable`, as are bytes that do not match `digest`.
        A missing blob is `InvalidInput`.
        """
        self._check_open()
        if not DIGEST_RE.match(digest):
            raise InvalidInput(f"blob digest {digest!r} is not sha256:<64 lowercase hex>")
        try:
            parse(f"{self._host}/{repository}@{digest}")
        except ReferenceError as exc:
            raise InvalidInput(f"{repository!r} is not a repository name: {exc}") from exc
        what = f"blob {digest} of {self._host}/{repository}"
        scope = f"repository:{repository}:pull"
        got = self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scope,
            what,
            doing="fetching",
            accept="*/*",
            limit=max_bytes,
        )
        if got.status == 404:
            said = _registry_errors(got.body)
            raise InvalidInput(f"{what} does not exist" + (f" (the registry said {said})" if said else ""))
        if got.status != 200:
            raise self._unexpected(got, what)
        served = "sha256:" + hashlib.sha256(got.body).hexdigest()
        if served != digest:
            raise RegistryUnavailable(
                f"registry {self._host} served {what} whose sha256 is {served}: "
                "it does not serve the content it names"
            )
        return got.body

    def referrers(self, ref: ImageRef, artifact_type: str | None = None) -> list[Descriptor]:
        """The manifests whose `subject` is `ref`'s digest (OCI 1.1 referrers), in the registry's order.

        Asks the referrers API (`GET /v2/<name>/referrers/<digest>`, following `Link: rel="next"`
        pages); a registry without it answers 404 (distribution 2.8 does), and then the referrers
        tag schema is read instead: the tag `sha256-<hex>` holding an OCI image index of the
        referrers (no such tag: none). With `artifact_type`, only descriptors of that `artifactType`
        are kept (whatever the registry filtered). Entries that are not sha256 descriptors are skipped.
        """
        self._reference(ref)
        digest = ref.digest
        if digest is None:
            raise InvalidInput(f"{ref} has no digest: referrers are listed for a digest")
        scope = f"repository:{ref.repository}:pull"
        what = f"the referrers of {ref.written}@{digest}"
        doing = "listing"
        query = "?" + urllib.parse.urlencode({"artifactType": artifact_type}) if artifact_type else ""
        path: str | None = f"/v2/{ref.repository}/referrers/{digest}{query}"
        found: list[Descriptor] = []
        pages = 0
        while path is not None:
            pages += 1
            if pages > _MAX_REFERRER_PAGES:
                raise RegistryUnavailable(
                    f"registry {self._host} answered more than {_MAX_REFERRER_PAGES} pages for {what}"
                )
            got = self._request("GET", path, scope, what, doing=doing, accept=_OCI_INDEX)
            if got.status == 404 and pages == 1:
                return self._referrers_tag(ref.repository, digest, scope, what, artifact_type)
            if got.status != 200:
                raise self._unexpected(got, what)
            found += self._index_entries(got.body, what)
            path = self._same_origin(_next_link(got.headers), what)
        return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]

    # -- answers -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise PluginError(f"registry {self._host} was used after close()")

    def _reference(self, ref: ImageRef) -> str:
        """The tag or digest to ask for `ref`, once checked that this registry serves it."""
        self._check_open()
        if ref.registry.lower() != self._host.lower():
            raise InvalidInput(f"{ref} is not on registry {self._host}, which this entry serves")
        reference = ref.digest or ref.tag
        if reference is None:
            raise InvalidInput(f"{ref} has neither a tag nor a digest")
        return reference

    def _served_digest(self, reply: _Reply, what: str) -> str:
        """The sha256 of a manifest reply's bytes, checked against the digest the registry claims."""
        digest = "sha256:" + hashlib.sha256(reply.body).hexdigest()
        claimed = _header_digest(reply.headers)
        if claimed is not None and claimed != digest:
            raise RegistryUnavailable(
                f"registry {self._host} served a manifest for {what} whose sha256 is {digest}, "
                f"but said it is {claimed}"
            )
        return digest

    def _referrers_tag(
        self, repository: str, digest: str, scope: str, what: str, artifact_type: str | None
    ) -> list[Descriptor]:
        """The referrers tag schema: the index tagged `sha256-<hex>`, or nothing when there is none."""
        tag = digest.replace(":", "-", 1)
        got = self._request(
            "GET", f"/v2/{repository}/manifests/{tag}", scope, what, doing="listing", accept=_OCI_INDEX
        )
        if got.status == 404:
            return []
        if got.status != 200:
            raise self._unexpected(got, what)
        self._served_digest(got, what)
        found = self._index_entries(got.body, f"{what} (tag {tag})")
        return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]

    def _same_origin(self, link: str | None, what: str) -> str | None:
        """A pagination link, if it stays on this registry (credentials never go elsewhere)."""
        if link is None:
            return None
        try:
            url = self._client.base_url.join(link)
        except httpx.InvalidURL as exc:
            raise RegistryUnavailable(f"registry {self._host} sent an invalid next link for {what}") from exc
        base = self._client.base_url
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise RegistryUnavailable(
                f"registry {self._host} sent a next link for {what} to another origin: {url.scheme}://"
                f"{url.netloc.decode('ascii', 'replace')}"
            )
        return url.raw_path.decode("ascii")

    def _index_entries(self, body: bytes, what: str) -> list[Descriptor]:
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            data = None
        manifests = data.get("manifests") if isinstance(data, dict) else None
        if not isinstance(manifests, list):
            raise RegistryUnavailable(
                f"registry {self._host} answered {what} with something that is not an OCI image index"
            )
        found = []
        for entry in manifests:
            descriptor = _descriptor(entry)
            if descriptor is None:
                log.warning("registry %s: skipping a malformed descriptor in %s", self._host, what)
                continue
            found.append(descriptor)
        return found

    def _checked(self, ref: ImageRef, digest: str) -> str:
        if ref.digest is not None and digest != ref.digest:
            raise RegistryUnavailable(
                f"registry {self._host} answered {digest} when asked for {ref}: "
                "it does not serve the content it names"
            )
        return digest

    def _missing(self, ref: ImageRef, scope: str, reply: _Reply) -> InvalidInput:
        said = _registry_errors(reply.body)
        generic = f"image {ref} does not exist in registry {self._host}" + (
            f" (the registry said {said})" if said else ""
        )
        try:
            tags = self._request("GET", f"/v2/{ref.repository}/tags/list", scope, str(ref))
        except StellaError:
            return InvalidInput(generic)
        if tags.status == 404 and "NAME_UNKNOWN" in _registry_errors(tags.body):
            return InvalidInput(
                f"image {ref} does not exist: registry {self._host} has no repository {ref.repository!r}"
            )
        if tags.status != 200:
            return InvalidInput(generic)
        missing = f"no manifest {ref.digest}" if ref.digest is not None else f"no tag {ref.tag!r}"
        return InvalidInput(
            f"image {ref} does not exist: repository {ref.repository!r} in registry {self._host} "
            f"has {missing}"
        )

    def _unexpected(self, reply: _Reply, what: str) -> StellaError:
        said = _registry_errors(reply.body)
        message = f"registry {self._host} answered HTTP {reply.status} {reply.reason} for {what}" + (
            f": {said}" if said else ""
        )
        if 400 <= reply.status < 500:
            return InvalidInput(message)
        return RegistryUnavailable(message)

    def _credentials_error(self, status: int, what: str, scope: str) -> InvalidInput:
        credentials = self._credentials()
        if credentials is None:
            return InvalidInput(
                f"registry {self._host} requires credentials to pull {what} (HTTP {status}) and "
                "none are configured: give its registry entry `credentials: env:NAME` or "
                "`credentials: file:/path` (holding user:password), or log in with docker"
            )
        return InvalidInput(
            f"registry {self._host} refused the credentials from {credentials.source} for {what} "
            f"(HTTP {status}): check that they are valid and allow {scope}"
        )

    # -- authentication ------------------------------------------------------------------------

    def _credentials(self) -> _Credentials | None:
        if self._explicit is not None:
            return self._explicit
        with self._lock:
            if not self._docker_credentials_loaded:
                self._docker_credentials = _docker_config_credentials(self._host)
                self._docker_credentials_loaded = True
            return self._docker_credentials

    def _request(
        self,
        method: str,
        path: str,
        scope: str,
        what: str,
        *,
        reauthenticated: bool = False,
        doing: str = "resolving",
        accept: str = _ACCEPT,
        limit: int = _MAX_MANIFEST_BYTES,
    ) -> _Reply:
        """One request with authentication: on 401, learn the challenge, authenticate, try again.

        `doing` and `what` name the operation in errors ("resolving" `ref`); `limit` caps the body.
        """
        headers = {"Accept": accept}
        authorization = self._authorization(scope, what, doing)
        if authorization is not None:
            headers["Authorization"] = authorization
        reply = self._send(method, path, headers=headers, what=what, doing=doing, limit=limit)
        if reply.status == 403 or (reply.status == 401 and reauthenticated):
            raise self._credentials_error(reply.status, what, scope)
        if reply.status != 401:
            return reply
        challenges = [
            c
            for c in _parse_challenges(reply.headers.get_list("www-authenticate"))
            if c.scheme in ("bearer", "basic")
        ]
        if not challenges:
            raise InvalidInput(
                f"registry {self._host} answered HTTP 401 for {what} without a Bearer or Basic "
                "WWW-Authenticate challenge"
            )
        challenge = next((c for c in challenges if c.scheme == "bearer"), challenges[0])
        with self._lock:
            self._challenge = challenge
            self._tokens.pop(scope, None)
        if challenge.scheme == "basic" and self._credentials() is None:
            raise self._credentials_error(401, what, scope)
        return self._request(
            method, path, scope, what, reauthenticated=True, doing=doing, accept=accept, limit=limit
        )

    def _authorization(self, scope: str, what: str, doing: str = "resolving") -> str | None:
        with self._lock:
            challenge = self._challenge
            token = self._tokens.get(scope)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            credentials = self._credentials()
            if credentials is None or credentials.identity_token is not None:
                return None
            pair = f"{credentials.username}:{credentials.password}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        if token is None or token.expires <= time.monotonic():
            token = self._fetch_token(challenge, scope, what, doing)
            with self._lock:
                self._tokens[scope] = token
        return f"Bearer {token.value}"

    def _fetch_token(self, challenge: _Challenge, scope: str, what: str, doing: str = "resolving") -> _Token:
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
        credentials = self._credentials()
        plain = realm_url.scheme != "https" and not _is_loopback(realm_url.host)
        if credentials is not None and plain and not self._insecure:
            raise InvalidInput(
                f"registry {self._host}: refusing to send credentials to the non-HTTPS token "
                f"endpoint {realm} (mark the registry insecure to allow it)"
            )
        service = challenge.params.get("service")
        fields = {"scope": scope, **({"service": service} if service else {})}
        headers = {"Accept": "application/json"}
        if credentials is not None and credentials.identity_token is not None:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": "stella",
                **fields,
            }
            reply = self._send("POST", realm, headers=headers, what=what, doing=doing, data=form)
        else:
            if credentials is not None:
                pair = f"{credentials.username}:{credentials.password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
            reply = self._send("GET", realm, headers=headers, what=what, doing=doing, params=fields)
        if reply.status in (401, 403):
            raise self._credentials_error(reply.status, what, scope)
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

    # -- transport -----------------------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        delay: float = self._settings.backoff * 2.0 ** (attempt - 1)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self._settings.max_delay)

    def _send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        what: str,
        doing: str = "resolving",
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        limit: int = _MAX_MANIFEST_BYTES,
    ) -> _Reply:
        """Send with retries on 429, 5xx, timeouts and connection errors; never raises httpx's."""
        attempts = self._settings.attempts
        last = "no attempt made"
        last_exc: Exception | None = None
        for attempt in range(1, attempts + 1):
            try:
                request = self._client.build_request(method, url, headers=headers, params=params, data=data)
                response = self._client.send(request, stream=True)
                try:
                    status = response.status_code
                    if status == 429 or status >= 500:
                        last = f"HTTP {status} {response.reason_phrase}".rstrip()
                        last_exc = None
                        delay = self._delay(attempt, _retry_after(response.headers.get("retry-after")))
                    else:
                        body = b"" if method == "HEAD" else self._read_capped(response, what, limit)
                        return _Reply(status, response.reason_phrase, response.headers, body)
                finally:
                    response.close()
            except httpx.TimeoutException as exc:
                last = f"timed out after {self._settings.timeout:g} s ({type(exc).__name__})"
                last_exc, delay = exc, self._delay(attempt)
            except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
                last = f"connection failed ({exc or type(exc).__name__})"
                last_exc, delay = exc, self._delay(attempt)
            except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
                raise RegistryUnavailable(
                    f"registry {self._host} could not be asked about {what}: {exc}"
                ) from exc
            if attempt < attempts:
                log.info(
                    "registry %s: %s for %s; retrying in %.2f s (attempt %d of %d)",
                    self._host,
                    last,
                    what,
                    delay,
                    attempt,
                    attempts,
                )
                time.sleep(delay)
        plural = "attempt" if attempts == 1 else "attempts"
        raise RegistryUnavailable(
            f"registry {self._host} is unavailable: {doing} {what} failed with {last} "
            f"after {attempts} {plural}"
        ) from last_exc

    def _read_capped(self, response: httpx.Response, what: str, limit: int = _MAX_MANIFEST_BYTES) -> bytes:
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > limit:
                raise RegistryUnavailable(
                    f"registry {self._host} answered more than {limit} bytes for {what}"
                )
            chunks.append(chunk)
        return b"".join(chunks)


class DistributionPlugin:
    """The `oci` entry point: opens a `DistributionRegistry` per configured registry host."""

    manifest: PluginManifest = PluginManifest(
        name="oci",
        version=_package_version(),
        kinds=("registry",),
        network=True,
        description="OCI distribution API over HTTP(S): token/basic auth, keep-alive, retries",
    )

    def open(self, options: RegistryOptions, files: FileSource) -> DistributionRegistry:
        """A registry client for `options.host`. `files` is not used: everything is remote."""
        return DistributionRegistry(options)


plugin = DistributionPlugin()
"""The object the `stella.registries` entry point `oci` names."""
