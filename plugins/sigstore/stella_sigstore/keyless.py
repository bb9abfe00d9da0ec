"""Keyless evidence signing with Sigstore, its offline verification, and witnessing.

Signing (`keyless`, entry point `stella.signers`): sigstore-python asks Fulcio for a short-lived
certificate binding an ephemeral key to the signer's OIDC identity, signs the statement as a DSSE
envelope, and logs the signature in Rekor; the result is a Sigstore bundle v0.3 with the certificate and
the log entry's inclusion proof. The identity token comes from a reference (`env:NAME`, default
`env:SIGSTORE_ID_TOKEN`, or `file:/path`), else from ambient CI credentials. The instance is the
public-good one, or a private one described by the ClientTrustConfig file in
`STELLA_SIGSTORE_TRUST_CONFIG`. Signing needs the network; every failure of the services is `Transient`.

Verification (`verify_keyless`, `KeylessVerifier`) is offline: the trusted root is pinned in the
repository (`trustedRoot` of `trust/keyless.yaml`) and the certificate's identity must be one the policy
allows (SAN and OIDC issuer). Failures are `BundleError`s, like those of key-based bundles.

Witnessing (`witness`) signs the exact bytes of an existing statement keylessly; the bundle is stored
beside the key-based one as `evidence/<hex>.keyless.sigstore.json`.

This module signs exactly the bytes it is given and never re-serialises a payload. It never prints;
verification never touches the network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

import id as ambient
import yaml
from cryptography import x509
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from sigstore import dsse
from sigstore.errors import Error as SigstoreError
from sigstore.errors import VerificationError
from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
from sigstore.oidc import ExpiredIdentity, IdentityError, IdentityToken, detect_credential
from sigstore.sign import Signer as SigstoreSigner
from sigstore.sign import SigningContext
from sigstore.verify import Verifier, policy
from sigstore_models.trustroot.v1 import TrustedRoot as TrustedRootMessage

from reconciler.errors import InvalidInput, PluginError, Problem, Transient, ValidationFailed
from reconciler.models import RepoPath
from reconciler.protocols import IN_TOTO_PAYLOAD_TYPE, FileSource, PluginManifest, Signer
from reconciler.sign import BundleError

from . import __version__

log = logging.getLogger(__name__)

DEFAULT_TOKEN_REF = "env:SIGSTORE_ID_TOKEN"
"""Where the identity token is read from when the settings name no reference."""

TRUST_CONFIG_ENV = "STELLA_SIGSTORE_TRUST_CONFIG"
"""Environment variable holding the path of a ClientTrustConfig JSON file (a private instance)."""

KEYLESS_POLICY_PATH = "trust/keyless.yaml"
"""Where a repository keeps its `KeylessPolicy`."""

MAX_POLICY_BYTES = 64 * 1024

_SIGNER_REUSE_SECONDS = 5 * 60
"""One ephemeral key and Fulcio certificate serve several signatures for this long (certificates last
10 minutes); after that, the next signature gets a fresh pair."""

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_OIDC_ISSUER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")


# --- signing ------------------------------------------------------------------------------------


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
                f"keyless signing: logging the signature in Rekor failed: {_describe(exc)}"
            ) from exc
        return bundle.to_json().encode("utf-8")

    def _current_signer(self) -> SigstoreSigner:
        if self._signer is not None and time.monotonic() - self._signer_since < _SIGNER_REUSE_SECONDS:
            return self._signer
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
                f"keyless signing: getting a signing certificate from Fulcio failed: {_describe(exc)}"
            ) from exc
        self._signer_since = time.monotonic()
        return self._signer

    def _signing_context(self) -> SigningContext:
        if self._context is None:
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
                    f"{_describe(exc)}"
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
    if isinstance(exc, SigstoreError | ExpiredIdentity | OSError | ValueError | KeyError):
        return True  # OSError covers requests' exceptions; ValueError malformed answers
    return type(exc).__module__.split(".")[0] in ("sigstore", "tuf", "id", "rfc3161_client")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text and exc.__cause__ is not None:
        text = str(exc.__cause__).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _looks_like_jwt(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", value) is not None


def _token_from(raw: str, origin: str) -> IdentityToken:
    """An IdentityToken from `raw` (never echoed: it is a credential)."""
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


def trust_config(environ: Mapping[str, str]) -> ClientTrustConfig | None:
    """The private instance named by `STELLA_SIGSTORE_TRUST_CONFIG`, or None (the public-good one)."""
    value = environ.get(TRUST_CONFIG_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            f"{path}: cannot read the Sigstore trust config ({TRUST_CONFIG_ENV}): {exc}"
        ) from exc
    try:
        config = ClientTrustConfig.from_json(text)
        # Both parts are checked now, so that a broken file is reported before anything is signed.
        config.trusted_root.get_fulcio_certs()
        config.signing_config.get_fulcio()
    except (SigstoreError, ValueError) as exc:
        raise InvalidInput(
            f"{path}: not a usable Sigstore ClientTrustConfig ({TRUST_CONFIG_ENV}): {_describe(exc)}"
        ) from exc
    return config


class _KeylessSignerPlugin:
    """The `keyless` signer plugin (entry point `stella.signers`)."""

    def __init__(self) -> None:
        self.manifest = PluginManifest(
            name="keyless",
            version=__version__,
            kinds=("signer",),
            network=True,
            description="Sigstore keyless: Fulcio certificate for an OIDC identity + Rekor entry",
        )

    def open(self, key: str, environ: Mapping[str, str]) -> KeylessSigner:
        """Check the token and trust config now; the services are contacted at the first `sign`."""
        token = identity_token(key, environ)
        config = trust_config(environ)
        log.debug("keyless signer for %s (issuer %s)", token.identity, token.issuer)
        return KeylessSigner(token, config)

    def open_verifier(self, files: FileSource) -> _PolicyVerifier | None:
        """A verifier of keyless evidence bundles under the repository's `trust/keyless.yaml` (None
        when the repository has no such policy)."""
        keyless_policy = load_keyless_policy(files)
        if keyless_policy is None:
            return None
        return _PolicyVerifier(KeylessVerifier(keyless_policy, read_trusted_root(files, keyless_policy)))


class _PolicyVerifier:
    """`BundleVerifier` over a `KeylessVerifier`: returns the certificate identity that signed."""

    def __init__(self, verifier: KeylessVerifier) -> None:
        self._verifier = verifier

    def verify(self, bundle: bytes, payload: bytes, *, source: str) -> str:
        matched = self._verifier.verify(bundle, payload, source=source).identity
        return f"{matched.san} ({matched.issuer})"


keyless = _KeylessSignerPlugin()


# --- the policy ---------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _valid_san(value: str) -> str:
    if not value or value != value.strip() or len(value) > 4096:
        raise ValueError(
            f"{value!r} is not a certificate identity (a URI or an email, no surrounding spaces)"
        )
    return value


def _valid_issuer(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value) or len(value) > 4096:
        raise ValueError(
            f"{value!r} is not an OIDC issuer URL (e.g. https://token.actions.githubusercontent.com)"
        )
    return value


class KeylessIdentity(_Model):
    """One identity allowed to sign: the certificate's SAN and OIDC issuer, both compared exactly."""

    san: Annotated[str, AfterValidator(_valid_san)]
    """E.g. `https://github.com/acme/shop/.github/workflows/release.yml@refs/heads/main` or an email."""
    issuer: Annotated[str, AfterValidator(_valid_issuer)]
    """E.g. `https://token.actions.githubusercontent.com`."""


class KeylessPolicy(_Model):
    """`trust/keyless.yaml`: which keyless signatures count, verified against a pinned trusted root."""

    apiVersion: Literal["stella/v1"]
    kind: Literal["KeylessPolicy"]
    trustedRoot: RepoPath
    """A Sigstore trusted root (`trusted_root.json`) in the repository."""
    identities: Annotated[list[KeylessIdentity], Field(min_length=1)]


def _yaml_tree(text: str, source: str) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    """Parse one YAML document (no anchors, aliases, merge keys or duplicate keys); keep key lines."""
    lines: dict[tuple[str | int, ...], int] = {}

    def build(loader: yaml.SafeLoader, node: yaml.Node, path: tuple[str | int, ...]) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    raise InvalidInput("mapping keys must be plain strings", file=source, line=line)
                key = str(loader.construct_object(key_node))
                if key in out:
                    raise InvalidInput(f"duplicate key {key!r}", file=source, line=line)
                lines[(*path, key)] = line
                out[key] = build(loader, value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(loader, item, (*path, i)) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                line = event.start_mark.line + 1 if event.start_mark else None
                raise InvalidInput("YAML anchors and aliases are not allowed", file=source, line=line)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            return (None if node is None else build(loader, node, ())), lines
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise InvalidInput(
            f"YAML syntax error: {exc.problem or exc}", file=source, line=mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"YAML error: {exc}", file=source) from None


def parse_keyless_policy(data: bytes, *, source: str = KEYLESS_POLICY_PATH) -> KeylessPolicy:
    """Parse a `KeylessPolicy`; `InvalidInput` (with the line where known) when it is not one.

    Several field errors are raised together as `ValidationFailed`.
    """
    if len(data) > MAX_POLICY_BYTES:
        raise InvalidInput(f"file is {len(data)} bytes, over the {MAX_POLICY_BYTES}-byte limit", file=source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"not UTF-8 text (byte {exc.start})", file=source) from None
    tree, lines = _yaml_tree(text, source)
    if not isinstance(tree, dict):
        raise InvalidInput(
            "expected a mapping of fields (apiVersion, kind, trustedRoot, identities)", file=source
        )
    if tree.get("kind") != "KeylessPolicy":
        raise InvalidInput(
            f"kind must be 'KeylessPolicy' here, not {tree.get('kind')!r}",
            file=source,
            line=lines.get(("kind",)),
        )
    try:
        return KeylessPolicy.model_validate(tree)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            dotted = ".".join(str(p) for p in loc)
            if err["type"] == "extra_forbidden":
                message = f"unknown field {dotted!r}"
            elif err["type"] == "missing":
                message = f"missing required field {dotted!r}"
            elif err["type"] == "literal_error" and loc == ("apiVersion",):
                message = f"apiVersion must be 'stella/v1', not {err.get('input')!r}"
            else:
                message = f"{dotted}: {err['msg'].removeprefix('Value error, ')}"
            line = next((lines[loc[:end]] for end in range(len(loc), -1, -1) if loc[:end] in lines), None)
            problems.append(Problem(source, line, message))
        if len(problems) == 1:
            raise InvalidInput(problems[0].message, file=source, line=problems[0].line) from None
        raise ValidationFailed(problems) from None


def load_keyless_policy(files: FileSource) -> KeylessPolicy | None:
    """The repository's `trust/keyless.yaml`, or None when it has none."""
    data = files.read(KEYLESS_POLICY_PATH)
    return None if data is None else parse_keyless_policy(data)


def read_trusted_root(files: FileSource, keyless_policy: KeylessPolicy) -> bytes:
    """The bytes of the trusted root the policy pins."""
    data = files.read(keyless_policy.trustedRoot)
    if data is None:
        raise InvalidInput(
            f"{keyless_policy.trustedRoot}: trusted root not found (named by {KEYLESS_POLICY_PATH})"
        )
    return data


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedKeyless:
    """What a verified keyless bundle says."""

    payload: bytes
    payload_type: str
    identity: KeylessIdentity
    """The allowed identity the certificate matched."""
    log_index: int
    """The transparency log index of the signature."""
    integrated_time: datetime | None
    """When the log integrated it (Rekor v1, covered by the log's signed promise), else None."""


class _IdentityNotAllowed(VerificationError):
    """The certificate is valid but names no identity the policy allows."""


class _AllowedIdentities:
    """A sigstore `VerificationPolicy`: the certificate must match one of the allowed identities."""

    def __init__(self, identities: list[KeylessIdentity]) -> None:
        self._checks = [(i, policy.Identity(identity=i.san, issuer=i.issuer)) for i in identities]
        self.matched: KeylessIdentity | None = None

    def verify(self, cert: x509.Certificate) -> None:
        for allowed, check in self._checks:
            try:
                check.verify(cert)
            except VerificationError:
                continue
            self.matched = allowed
            return
        allowed_text = ", ".join(f"{i.san} (issuer {i.issuer})" for i, _ in self._checks)
        raise _IdentityNotAllowed(
            f"the certificate names {_certificate_identity(cert)}, which {KEYLESS_POLICY_PATH} does not "
            f"allow (allowed: {allowed_text})"
        )


def _certificate_identity(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [
            *san.get_values_for_type(x509.UniformResourceIdentifier),
            *san.get_values_for_type(x509.RFC822Name),
        ]
    except x509.ExtensionNotFound:
        names = []
    try:
        ext = cert.extensions.get_extension_for_oid(_OIDC_ISSUER_OID).value
        issuer = ext.value.decode("utf-8", "replace") if isinstance(ext, x509.UnrecognizedExtension) else "?"
    except x509.ExtensionNotFound:
        issuer = "no issuer"
    return f"{', '.join(names) or 'no SAN'} (issuer {issuer})"


def _malformed(source: str, what: str) -> BundleError:
    return BundleError(f"{source}: malformed Sigstore bundle: {what}", reason="malformed")


def _log_entry(doc: dict[str, Any]) -> tuple[int, datetime | None]:
    entries = doc.get("verificationMaterial", {}).get("tlogEntries") or [{}]
    entry = entries[0] if isinstance(entries[0], dict) else {}
    index = int(entry.get("logIndex", 0))
    seconds = int(entry.get("integratedTime", 0))
    return index, datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None


class KeylessVerifier:
    """Verifies keyless bundles offline against one pinned trusted root and a `KeylessPolicy`.

    Build it once and verify many bundles with it. An unusable trusted root is `InvalidInput` naming
    the policy's `trustedRoot`.
    """

    def __init__(self, keyless_policy: KeylessPolicy, trusted_root: bytes) -> None:
        self.policy = keyless_policy
        where = keyless_policy.trustedRoot
        try:
            root = TrustedRoot(TrustedRootMessage.from_json(trusted_root))
            self._verifier = Verifier(trusted_root=root)
        except (SigstoreError, ValueError) as exc:
            raise InvalidInput(f"{where}: not a usable Sigstore trusted root: {_describe(exc)}") from exc

    def verify(self, bundle: bytes, payload: bytes, *, source: str) -> VerifiedKeyless:
        """Verify that `bundle` is a keyless DSSE bundle over exactly `payload`, signed by an allowed
        identity. `source` names the bundle in every error.

        Checks (by sigstore-python, offline): the certificate chains to the trusted root's Fulcio CA at
        the log's integration time, its SCT, the log entry's inclusion proof, checkpoint and signed
        promise, the entry's consistency with the envelope, and the DSSE signature; then the identity
        and the payload. Raises `BundleError`, `reason` one of `malformed`, `unsupported` (a key-based or
        non-DSSE bundle), `not-verified` (sigstore's verification failed; its reason is in the message),
        `identity` (valid, but by an identity the policy does not allow), `payload-mismatch`.
        """
        try:
            doc = json.loads(bundle.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _malformed(source, f"not JSON: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("verificationMaterial"), dict):
            raise _malformed(source, "expected a JSON object with verificationMaterial")
        if "publicKey" in doc["verificationMaterial"]:
            raise BundleError(
                f"{source}: a key-based bundle, not a keyless one: verify it with the evidence keys",
                reason="unsupported",
            )
        if "dsseEnvelope" not in doc:
            raise BundleError(f"{source}: not a DSSE bundle (it has no dsseEnvelope)", reason="unsupported")
        try:
            parsed = Bundle.from_json(bundle)
        except (SigstoreError, ValueError) as exc:
            raise _malformed(source, _describe(exc)) from exc
        allowed = _AllowedIdentities(self.policy.identities)
        try:
            payload_type, signed = self._verifier.verify_dsse(parsed, allowed)
        except _IdentityNotAllowed as exc:
            raise BundleError(f"{source}: identity not allowed: {exc}", reason="identity") from exc
        except (SigstoreError, ValueError) as exc:
            raise BundleError(f"{source}: keyless verification failed: {exc}", reason="not-verified") from exc
        if payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise BundleError(
                f"{source}: the signed payload type is {payload_type!r}, not {IN_TOTO_PAYLOAD_TYPE!r}",
                reason="payload-mismatch",
            )
        if signed != payload:
            raise BundleError(
                f"{source}: the bundle signs other bytes (sha256 {hashlib.sha256(signed).hexdigest()}) than "
                f"the statement (sha256 {hashlib.sha256(payload).hexdigest()})",
                reason="payload-mismatch",
            )
        assert allowed.matched is not None  # verify_dsse returned, so the policy passed
        log_index, integrated_time = _log_entry(doc)
        return VerifiedKeyless(signed, payload_type, allowed.matched, log_index, integrated_time)


def verify_keyless(
    bundle: bytes, payload: bytes, keyless_policy: KeylessPolicy, trusted_root: bytes, *, source: str
) -> VerifiedKeyless:
    """Verify one keyless bundle offline (see `KeylessVerifier.verify`)."""
    return KeylessVerifier(keyless_policy, trusted_root).verify(bundle, payload, source=source)


# --- witnessing ---------------------------------------------------------------------------------


def witness_path(evidence_hex: str) -> str:
    """Where the keyless witness of `evidence/<hex>.json` is stored."""
    if not _HEX64.match(evidence_hex):
        raise InvalidInput(f"{evidence_hex!r} is not an evidence id (64 lowercase hex digits)")
    return f"evidence/{evidence_hex}.keyless.sigstore.json"


def witness(statement: bytes, signer: Signer) -> bytes:
    """A keyless bundle over exactly `statement` (the bytes of `evidence/<hex>.json`), made by `signer`.

    It adds an identity and a transparency-log time to evidence first signed offline with a key; it is
    stored beside the key-based bundle (`witness_path`), which does not change. `InvalidInput` when the
    signer is not keyless; `PluginError` when the bundle does not carry exactly these bytes.
    """
    bundle = signer.sign(statement, IN_TOTO_PAYLOAD_TYPE)
    try:
        doc = json.loads(bundle.decode("utf-8"))
        material = doc["verificationMaterial"]
        signed = base64.b64decode(doc["dsseEnvelope"]["payload"], validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise PluginError(f"witness: the signer returned no DSSE bundle: {exc}") from exc
    if "publicKey" in material or not material.get("tlogEntries"):
        raise InvalidInput(
            "witness: the signer made a key-based bundle; witnessing needs the keyless signer "
            "(plugin keyless), which adds a certificate and a transparency-log entry"
        )
    if signed != statement:
        raise PluginError("witness: the signer's bundle does not carry the statement's exact bytes")
    return bundle
