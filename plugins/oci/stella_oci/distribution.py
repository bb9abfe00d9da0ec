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
none, as distribution 2.8 has not, the referrers tag schema `sha256-<hex>`). For `stella doctor`,
`ping()` checks with one `GET /v2/` that the registry answers (and takes the configured credentials).

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

This module is the façade: `DistributionRegistry` and the `plugin` entry point object. The work is
done by its siblings: `transport` (the client, retries, error mapping), `auth` (credentials,
challenges, tokens) and `referrers` (the referrers API and the tag schema).

What it must not do: pull image layers (`blob` is for small artifacts only); interpret manifests
beyond hashing them and listing an index's descriptors; write to a registry; remember digests between
calls (tags move; the core resolves a tag once per release); print or exit; log or report secrets
(credentials, tokens, `Authorization` headers).
"""

from __future__ import annotations

import hashlib
import json
import threading
from types import TracebackType
from typing import Final

from reconciler.api import (
    DIGEST_RE,
    Descriptor,
    FileSource,
    ImageRef,
    InvalidInput,
    PluginError,
    PluginManifest,
    ReferenceError,
    RegistryOptions,
    RegistryPing,
    RegistryUnavailable,
    StellaError,
    parse,
)

from .auth import Authenticator, credentials_from_reference, usable_challenge
from .referrers import list_referrers
from .transport import (
    MAX_MANIFEST_BYTES,
    Failure,
    Reply,
    Transport,
    header_digest,
    package_version,
    registry_errors,
    served_digest,
    settings,
    unexpected,
)

__all__ = ["MANIFEST_MEDIA_TYPES", "Descriptor", "DistributionPlugin", "DistributionRegistry", "plugin"]

MANIFEST_MEDIA_TYPES: Final[tuple[str, ...]] = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
"""The manifest media types asked for, multi-arch first: a multi-arch tag resolves to its index."""

_ACCEPT: Final = ", ".join(MANIFEST_MEDIA_TYPES)


def _media_type(reply: Reply) -> str:
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
        entry_settings = settings(host, options.options)
        explicit = credentials_from_reference(options.credentials) if options.credentials else None
        self._lock = threading.Lock()
        self._closed = False
        self._transport = Transport(
            host, entry_settings, loopback=probe.is_loopback, insecure=options.insecure
        )
        self._auth = Authenticator(self._transport, explicit, insecure=options.insecure)

    @property
    def url(self) -> str:
        """The base URL requests go to (`http://127.0.0.1:5000`, `https://registry.example.com`)."""
        return str(self._transport.base_url).rstrip("/")

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
        self._transport.close()

    def resolve(self, ref: ImageRef) -> str:
        """The `sha256:` digest `ref`'s tag names now (or `ref`'s digest, once checked to exist)."""
        reference = self._reference(ref)
        path = f"/v2/{ref.repository}/manifests/{reference}"
        scope = f"repository:{ref.repository}:pull"
        what = str(ref)

        head = self._request("HEAD", path, scope, what)
        if head.status == 200:
            digest = header_digest(head.headers)
            if digest is not None:
                return self._checked(ref, digest)
        # No usable digest header, HEAD refused, or not found: GET tells us more.
        got = self._request("GET", path, scope, what)
        if got.status == 200:
            return self._checked(ref, served_digest(self._host, got, what))
        if got.status == 404:
            raise self._missing(ref, scope, got)
        raise unexpected(self._host, got, what)

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
            raise unexpected(self._host, got, what)
        digest = served_digest(self._host, got, what)
        self._checked(ref, digest)
        return got.body, _media_type(got)

    def blob(self, repository: str, digest: str, *, max_bytes: int = MAX_MANIFEST_BYTES) -> bytes:
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
            said = registry_errors(got.body)
            raise InvalidInput(f"{what} does not exist" + (f" (the registry said {said})" if said else ""))
        if got.status != 200:
            raise unexpected(self._host, got, what)
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
        return list_referrers(self._transport, self._auth, ref, digest, artifact_type)

    def ping(self, timeout: float | None = None) -> RegistryPing:
        """`RegistryProbe.ping`: is the registry up, and does it take the configured credentials?

        `GET /v2/` at `url` (the base URL every other call uses), once, without retries, waiting at
        most `timeout` seconds (default: the entry's `timeout` option). Healthy: 200, or 401 when no
        credentials are configured (before login). When they are, and it answers 401, they are tried
        once as `docker login` does (Basic, or a Bearer token for no scope, then `/v2/` again) and
        the ping is about that last request, whose `request` names the credentials' source (never
        them); it is healthy on 200. Nothing learnt (challenge, token) is kept for later calls.

        Never raises for what the registry answers or for a failed connection: an answer that is no
        registry's (404, 5xx, ...) is unhealthy with its `status`; no answer, or a token endpoint that
        refuses or fails, is unhealthy with `status` None and the reason in `error`. Raises
        `InvalidInput` when Docker's `config.json` cannot be read, `PluginError` after `close()`.
        """
        self._check_open()
        url = f"{self.url}/v2/"
        request = f"GET {url}"
        first = self._probe(request, url, None, timeout)
        if isinstance(first, RegistryPing):
            return first
        credentials = self._auth.credentials()
        if first.status != 401 or credentials is None:
            return RegistryPing(request, healthy=first.status in (200, 401), status=first.status)
        challenge = usable_challenge(first)
        if challenge is None:  # nothing can log in
            return RegistryPing(request, healthy=False, status=first.status)
        request = f"GET {url} with the credentials from {credentials.source}"
        try:
            authorization = self._auth.login(challenge, url, timeout=timeout)
        except StellaError as exc:
            return RegistryPing(request, healthy=False, error=str(exc))
        second = self._probe(request, url, authorization, timeout)
        if isinstance(second, RegistryPing):
            return second
        return RegistryPing(request, healthy=second.status == 200, status=second.status)

    def _probe(
        self, request: str, url: str, authorization: str | None, timeout: float | None
    ) -> Reply | RegistryPing:
        """One `GET /v2/`: the reply, or the unhealthy `RegistryPing` of getting none."""
        headers = {"Accept": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        try:
            outcome = self._transport.attempt("GET", "/v2/", headers=headers, what=url, timeout=timeout)
        except RegistryUnavailable as exc:
            return RegistryPing(request, healthy=False, error=str(exc))
        if isinstance(outcome, Failure):  # no answer (`ConnectError: …`), or a 429/5xx one
            failed = outcome.exc
            error = "" if failed is None else f"{type(failed).__name__}: {failed}"
            return RegistryPing(request, healthy=False, status=outcome.status, error=error)
        return outcome

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

    def _checked(self, ref: ImageRef, digest: str) -> str:
        if ref.digest is not None and digest != ref.digest:
            raise RegistryUnavailable(
                f"registry {self._host} answered {digest} when asked for {ref}: "
                "it does not serve the content it names"
            )
        return digest

    def _missing(self, ref: ImageRef, scope: str, reply: Reply) -> InvalidInput:
        said = registry_errors(reply.body)
        generic = f"image {ref} does not exist in registry {self._host}" + (
            f" (the registry said {said})" if said else ""
        )
        try:
            tags = self._request("GET", f"/v2/{ref.repository}/tags/list", scope, str(ref))
        except StellaError:
            return InvalidInput(generic)
        if tags.status == 404 and "NAME_UNKNOWN" in registry_errors(tags.body):
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

    def _request(
        self,
        method: str,
        path: str,
        scope: str,
        what: str,
        *,
        doing: str = "resolving",
        accept: str = _ACCEPT,
        limit: int = MAX_MANIFEST_BYTES,
    ) -> Reply:
        """An authenticated request (see `Authenticator.request`), asking for manifests by default."""
        return self._auth.request(method, path, scope, what, accept=accept, doing=doing, limit=limit)


class DistributionPlugin:
    """The `oci` entry point: opens a `DistributionRegistry` per configured registry host."""

    manifest: PluginManifest = PluginManifest(
        name="oci",
        version=package_version(),
        kinds=("registry",),
        network=True,
        description="OCI distribution API over HTTP(S): token/basic auth, keep-alive, retries",
    )

    def open(self, options: RegistryOptions, files: FileSource) -> DistributionRegistry:
        """A registry client for `options.host`. `files` is not used: everything is remote."""
        return DistributionRegistry(options)


plugin = DistributionPlugin()
"""The object the `stella.registries` entry point `oci` names."""
