"""Keyless signing: a Fulcio certificate for an OIDC identity, a DSSE envelope, a Rekor entry.

What it does: `KeylessSigner.sign` has sigstore-python get a short-lived certificate binding an
ephemeral key to the signer's OIDC identity (reused for a few minutes), sign the statement as a DSSE
envelope and log it in Rekor; it returns the Sigstore bundle v0.3. `identity_token` finds the OIDC
token a settings reference names (`env:NAME`, default `env:SIGSTORE_ID_TOKEN`, or `file:/path`),
else the CI system's ambient credential. Every call to a service runs under `bounded`, so a service
that never answers costs a `Transient` error, never a hung pass; every failure of the services is
`Transient`.

What it must not do: re-serialise the payload (it signs exactly the bytes it is given); echo a token
(it is a credential); verify bundles (`keyless_verifier`); print; import sigstore or id at module level
(they are imported where used: importing them costs every process that loads the plugins ~0.15 s).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

from reconciler.api import IN_TOTO_PAYLOAD_TYPE, InvalidInput, Transient

from .keyless_trust import TRUST_CONFIG_ENV, describe_error

if TYPE_CHECKING:
    from sigstore.models import ClientTrustConfig
    from sigstore.oidc import IdentityToken
    from sigstore.sign import Signer as SigstoreSigner
    from sigstore.sign import SigningContext

DEFAULT_TOKEN_REF = "env:SIGSTORE_ID_TOKEN"
"""Where the identity token is read from when the settings name no reference."""

_SIGNER_REUSE_SECONDS = 5 * 60
"""One ephemeral key and Fulcio certificate serve several signatures for this long (certificates last
10 minutes); after that, the next signature gets a fresh pair."""


class KeylessSigner:
    """A `Signer` that signs with a Fulcio certificate for an OIDC identity and logs in Rekor.

    `trust_config` is the instance (None: the public-good instance, whose trust material is fetched
    through TUF at the first signature). The first `sign` gets an ephemeral key and certificate;
    later ones reuse them for a few minutes. `sign` returns sigstore-python's bundle JSON (v0.3), whose
    DSSE payload is exactly the bytes given.
    """

    def __init__(self, token: IdentityToken, trust_config: ClientTrustConfig | None) -> None:
        self._token = token
        self._trust_config = trust_config
        self._context: SigningContext | None = None
        self._signer: SigstoreSigner | None = None
        self._signer_since = 0.0

    @property
    def identity(self) -> str:
        """The identity the certificate will name (the token's `sub`, or `email` for some issuers)."""
        return self._token.identity

    @property
    def issuer(self) -> str:
        return self._token.issuer

    def __repr__(self) -> str:
        instance = "public-good" if self._trust_config is None else "private"
        return f"KeylessSigner(identity={self.identity!r}, issuer={self.issuer!r}, instance={instance!r})"

    def sign(self, payload: bytes, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> bytes:
        if payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise InvalidInput(
                f"keyless signing signs in-toto statements ({IN_TOTO_PAYLOAD_TYPE}) only, "
                f"not {payload_type!r}"
            )
        from sigstore import dsse
        from sigstore.errors import Error as SigstoreError

        try:
            statement = dsse.Statement(payload)  # keeps these exact bytes as the DSSE payload
        except SigstoreError as exc:
            raise InvalidInput(f"keyless signing: the payload is not an in-toto statement: {exc}") from exc
        signer = self._current_signer()
        try:
            bundle = bounded(lambda: signer.sign_dsse(statement), "logging the signature in Rekor")
        except Exception as exc:
            if not _service_failure(exc):
                raise
            raise Transient(
                f"keyless signing: logging the signature in Rekor failed: {describe_error(exc)}"
            ) from exc
        return bundle.to_json().encode("utf-8")

    def _current_signer(self) -> SigstoreSigner:
        if self._signer is not None and time.monotonic() - self._signer_since < _SIGNER_REUSE_SECONDS:
            return self._signer
        from sigstore.oidc import ExpiredIdentity
        from sigstore.sign import Signer as SigstoreSigner

        context = self._signing_context()
        try:
            # Makes the ephemeral key and gets its certificate from Fulcio (checking its SCT).
            self._signer = bounded(
                lambda: SigstoreSigner(self._token, context, cache=True),
                "getting a signing certificate from Fulcio",
            )
        except Exception as exc:
            if not _service_failure(exc):
                raise
            if isinstance(exc, ExpiredIdentity):
                raise Transient(
                    f"keyless signing: the OIDC identity token of {self.identity} has expired; "
                    "a fresh token is needed"
                ) from exc
            raise Transient(
                f"keyless signing: getting a signing certificate from Fulcio failed: {describe_error(exc)}"
            ) from exc
        self._signer_since = time.monotonic()
        return self._signer

    def _signing_context(self) -> SigningContext:
        if self._context is None:
            from sigstore.models import ClientTrustConfig
            from sigstore.sign import SigningContext

            try:
                trust = self._trust_config or ClientTrustConfig.production()
                self._context = bounded(
                    lambda: SigningContext.from_trust_config(trust), "loading the Sigstore trust material"
                )
            except Exception as exc:
                if not _service_failure(exc):
                    raise
                where = "the public-good instance (TUF)" if self._trust_config is None else TRUST_CONFIG_ENV
                raise Transient(
                    f"keyless signing: loading the Sigstore trust material of {where} failed: "
                    f"{describe_error(exc)}"
                ) from exc
        return self._context


def _timeout_setting(default: float = 60.0) -> float:
    """`STELLA_SIGSTORE_TIMEOUT` in seconds (read once, at import); `default` when unset or not positive."""
    try:
        value = float(os.environ.get("STELLA_SIGSTORE_TIMEOUT", default))
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default


SIGSTORE_TIMEOUT = _timeout_setting()
"""How long one call to Fulcio, Rekor or the trust material may take (sigstore-python sets no timeout)."""

T = TypeVar("T")


def bounded(call: Callable[[], T], what: str, timeout: float | None = None) -> T:
    """Run `call` on a thread of its own and wait at most `timeout` (default `SIGSTORE_TIMEOUT`): a
    service that never answers costs one abandoned thread and a `Transient` error, never a hung pass."""
    limit = SIGSTORE_TIMEOUT if timeout is None else timeout
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed back to the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="stella-sigstore", daemon=True)
    thread.start()
    thread.join(limit)
    if not outcome:
        raise Transient(f"keyless signing: {what} did not answer within {limit:g}s")
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return cast(T, value)


def _service_failure(exc: BaseException) -> bool:
    """Whether `exc` is sigstore (or its HTTP client, TUF, the OIDC library) reporting a failure of a
    service or of what it answered, as opposed to a bug. sigstore's Fulcio and Rekor client errors live
    in private modules, so they are recognised by module."""
    from sigstore.errors import Error as SigstoreError
    from sigstore.oidc import ExpiredIdentity

    if isinstance(exc, SigstoreError | ExpiredIdentity | OSError | ValueError | KeyError):
        return True  # OSError covers requests' exceptions; ValueError malformed answers
    return type(exc).__module__.split(".")[0] in ("sigstore", "tuf", "id", "rfc3161_client")


def _looks_like_jwt(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", value) is not None


def _token_from(raw: str, origin: str) -> IdentityToken:
    """An IdentityToken from `raw` (never echoed: it is a credential)."""
    from sigstore.oidc import IdentityError, IdentityToken

    if not _looks_like_jwt(raw):
        hint = ""
        if raw.startswith("-----BEGIN") or raw.startswith(("/", "~", ".")):
            hint = (
                " (it looks like a key or a path: the `key:` reference of the key signer, "
                "env:STELLA_SIGNING_KEY, does not apply to the keyless signer)"
            )
        raise InvalidInput(
            f"{origin} does not hold an OIDC identity token (a JWT){hint}; keyless signing needs one "
            "whose audience is 'sigstore'"
        )
    try:
        return IdentityToken(raw)
    except IdentityError as exc:
        detail = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        raise InvalidInput(f"{origin}: unusable OIDC identity token: {exc}{detail}") from exc


def _ambient_token(name: str) -> IdentityToken:
    """The token of the CI system this runs in (GitHub Actions, GitLab, Buildkite, CircleCI, GCP).

    Detection reads the process environment (sigstore's `detect_credential`), not `environ`.
    """
    import id as ambient
    from sigstore.oidc import IdentityError, detect_credential

    try:
        found = detect_credential()
    except IdentityError as exc:
        if isinstance(exc.__cause__, ambient.GitHubOidcPermissionCredentialError):
            raise InvalidInput(
                f"{name} is not set, and GitHub Actions gives this job no OIDC token: {exc}; "
                "grant the workflow `permissions: id-token: write`"
            ) from exc
        raise Transient(f"{name} is not set, and fetching the CI system's OIDC token failed: {exc}") from exc
    if found is None:
        raise InvalidInput(
            f"no OIDC identity token for keyless signing: environment variable {name} is not set and no "
            "ambient CI credentials were found; set it to an OIDC token (JWT) whose audience is 'sigstore', "
            "or run where the CI system provides one (GitHub Actions with `permissions: id-token: write`, "
            "GitLab CI `id_tokens: SIGSTORE_ID_TOKEN: {aud: sigstore}`, Buildkite, CircleCI, Google Cloud)"
        )
    return _token_from(found.strip(), "the ambient CI credential")


def identity_token(key: str, environ: Mapping[str, str]) -> IdentityToken:
    """The OIDC identity token a settings reference names.

    `env:NAME`: the variable's value, or, when NAME is unset or empty, the CI system's ambient
    credential. `file:/path`: the file's content (e.g. a projected service-account token).
    """
    kind, sep, rest = (key or DEFAULT_TOKEN_REF).partition(":")
    if kind == "env" and sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rest):
        raw = environ.get(rest, "").strip()
        if not raw:
            return _ambient_token(rest)
        return _token_from(raw, f"environment variable {rest}")
    if kind == "file" and sep and rest:
        path = Path(rest).expanduser()
        try:
            raw = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{path}: cannot read the OIDC identity token: {exc}") from exc
        return _token_from(raw, str(path))
    raise InvalidInput(
        f"identity token reference {key!r}: expected env:NAME (a variable holding an OIDC token, "
        f"default {DEFAULT_TOKEN_REF}) or file:/path"
    )
