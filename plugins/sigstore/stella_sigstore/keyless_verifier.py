"""Offline verification of keyless bundles against a pinned trusted root and a `KeylessPolicy`.

What it does: `KeylessVerifier` (and `verify_keyless`, for one bundle) checks with sigstore-python
that a bundle is a keyless DSSE bundle whose certificate chains to the trusted root's Fulcio CA, whose
log entry is proven, and whose signature covers exactly the given statement; then that the
certificate names an identity the policy allows. Failures are `BundleError`s with a `reason`, like
those of key-based bundles.

What it must not do: touch the network (the trusted root is pinned in the repository), accept a
key-based bundle as keyless, print, import sigstore at module level (it is imported where used:
importing it costs every process that loads the plugins ~0.15 s).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509

from reconciler.api import IN_TOTO_PAYLOAD_TYPE, BundleError, InvalidInput

from .keyless_trust import KEYLESS_POLICY_PATH, KeylessIdentity, KeylessPolicy, describe_error

if TYPE_CHECKING:
    from sigstore.errors import VerificationError

_OIDC_ISSUER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")


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


class _AllowedIdentities:
    """A sigstore `VerificationPolicy`: the certificate must match one of the allowed identities.

    `matched` is the identity it matched; `refusal`, the error it raised when the certificate is valid
    but names no identity the policy allows.
    """

    def __init__(self, identities: list[KeylessIdentity]) -> None:
        from sigstore.verify import policy

        self._checks = [(i, policy.Identity(identity=i.san, issuer=i.issuer)) for i in identities]
        self.matched: KeylessIdentity | None = None
        self.refusal: VerificationError | None = None

    def verify(self, cert: x509.Certificate) -> None:
        from sigstore.errors import VerificationError

        for allowed, check in self._checks:
            try:
                check.verify(cert)
            except VerificationError:
                continue
            self.matched = allowed
            return
        allowed_text = ", ".join(f"{i.san} (issuer {i.issuer})" for i, _ in self._checks)
        self.refusal = VerificationError(
            f"the certificate names {_certificate_identity(cert)}, which {KEYLESS_POLICY_PATH} does not "
            f"allow (allowed: {allowed_text})"
        )
        raise self.refusal


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
        from sigstore.errors import Error as SigstoreError
        from sigstore.models import TrustedRoot
        from sigstore.verify import Verifier
        from sigstore_models.trustroot.v1 import TrustedRoot as TrustedRootMessage

        self.policy = keyless_policy
        where = keyless_policy.trustedRoot
        try:
            root = TrustedRoot(TrustedRootMessage.from_json(trusted_root))
            self._verifier = Verifier(trusted_root=root)
        except (SigstoreError, ValueError) as exc:
            raise InvalidInput(f"{where}: not a usable Sigstore trusted root: {describe_error(exc)}") from exc

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
        from sigstore.errors import Error as SigstoreError
        from sigstore.models import Bundle

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
            raise _malformed(source, describe_error(exc)) from exc
        allowed = _AllowedIdentities(self.policy.identities)
        try:
            payload_type, signed = self._verifier.verify_dsse(parsed, allowed)
        except (SigstoreError, ValueError) as exc:
            if exc is allowed.refusal:
                raise BundleError(f"{source}: identity not allowed: {exc}", reason="identity") from exc
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
