"""Evidence signing: managed keys, the key-based Sigstore bundle, and its verification.

The offline signer uses a managed P-256 key. Its private half lives outside Git (a PEM file whose path is
in `STELLA_SIGNING_KEY`); the public half goes to `trust/evidence-keys/*.pub`. The key hint is
base64(sha256(DER SubjectPublicKeyInfo)), as cosign and sigstore-go write it into key-based bundles.

`KeySigner` signs a payload as a DSSE envelope (PAE, ECDSA-SHA256) inside a Sigstore bundle v0.3 whose
verification material is only that hint (`"tlogEntries": []`), the shape `cosign sign-blob --key
--new-bundle-format` writes; standard verifiers accept it given the public key. `verify_bundle` checks
such a bundle against the trusted public keys. The hint is unauthenticated: it only orders the keys
tried, and the signature decides. Transparency-log entries and timestamps, if a bundle carries any, are
not checked here. This module signs exactly the bytes it is given and never re-serialises a payload.
It reads key files but never prints; errors are `StellaError`s.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import InvalidInput, StellaError
from .protocols import IN_TOTO_PAYLOAD_TYPE, PluginManifest
from .version import __version__


def key_hint(public_key: ec.EllipticCurvePublicKey) -> str:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def public_pem(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_key(out: Path) -> str:
    """Write a new P-256 key pair to `out` (PKCS#8 PEM, mode 0600) and `out.pub`; return its hint."""
    pub_path = out.with_name(out.name + ".pub")
    for path in (out, pub_path):
        if path.exists():
            raise InvalidInput(f"{path}: already exists; refusing to overwrite a key")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(public_pem(key.public_key()))
    return key_hint(key.public_key())


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise InvalidInput(f"{path}: signing key not found") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidInput(f"{path}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InvalidInput(f"{path}: evidence keys must be ECDSA P-256")
    return key


def load_public_key(data: bytes, source: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidInput(f"{source}: not a PEM public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise InvalidInput(f"{source}: evidence keys must be ECDSA P-256")
    return key


# --- DSSE and the key-based bundle ----------------------------------------------------------------

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
"""The media type of the bundles `KeySigner` writes."""

ACCEPTED_BUNDLE_MEDIA_TYPES = frozenset(
    {
        BUNDLE_MEDIA_TYPE,
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    }
)
"""What `verify_bundle` reads: v0.3 (both spellings), and the older v0.1/v0.2, whose DSSE envelope is
the same. Only the DSSE signature is checked, so the differences in their tlog material do not matter."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: `DSSEv1 <len type> <type> <len payload> <payload>`.

    Lengths are the ASCII decimal byte counts (the type is encoded as UTF-8). This is what is signed.
    """
    ptype = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(payload), payload)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _require_p256(curve: ec.EllipticCurve, what: str) -> None:
    if curve.name != "secp256r1":
        raise InvalidInput(f"{what}: evidence keys must be ECDSA P-256, not {curve.name}")


class KeySigner:
    """A `Signer` with a managed P-256 private key: DSSE over the payload, in a key-based bundle v0.3.

    `sign` returns the bundle as JSON with sorted keys and no insignificant whitespace, ending with one
    newline. ECDSA signatures are randomised, so two bundles over the same payload differ in `sig` only;
    the payload inside is always exactly the bytes given.
    """

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        _require_p256(private_key.curve, "signing key")
        self._key = private_key
        self.public_key: ec.EllipticCurvePublicKey = private_key.public_key()
        self.hint: str = key_hint(self.public_key)

    def __repr__(self) -> str:
        return f"KeySigner(hint={self.hint!r})"

    def sign(self, payload: bytes, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> bytes:
        signature = self._key.sign(pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
        bundle = {
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": self.hint}, "tlogEntries": []},
            "dsseEnvelope": {
                "payload": _b64(payload),
                "payloadType": payload_type,
                "signatures": [{"sig": _b64(signature), "keyid": ""}],
            },
        }
        return json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


def resolve_key_path(key: str, environ: Mapping[str, str]) -> Path:
    """The private key file a settings reference names: `env:NAME` (NAME holds a path) or `file:/path`."""
    kind, sep, rest = key.partition(":")
    if not sep or kind not in ("env", "file") or not rest:
        raise InvalidInput(
            f"signing key reference {key!r}: expected env:NAME (a variable holding the path of a PEM key) "
            "or file:/path"
        )
    if kind == "file":
        path = Path(rest).expanduser()
        if not path.is_file():
            raise InvalidInput(
                f"{path}: signing key not found (from {key}); create one with `stella keys generate {path}`"
            )
        return path
    value = environ.get(rest, "")
    if not value:
        raise InvalidInput(
            f"environment variable {rest} is not set: it must hold the path of the evidence signing key "
            f"(a PEM file); create one with `stella keys generate PATH`, then `export {rest}=PATH`"
        )
    if value.lstrip().startswith("-----BEGIN"):
        # Never echo the value: it is a private key.
        raise InvalidInput(
            f"environment variable {rest} holds a PEM key; it must hold the path of the key file instead"
        )
    path = Path(value).expanduser()
    if not path.is_file():
        raise InvalidInput(
            f"{path}: signing key not found (from environment variable {rest}); create one with "
            f"`stella keys generate {path}` or point {rest} at an existing key"
        )
    return path


class _KeySignerPlugin:
    """The `key` signer plugin (entry point `stella.signers`): a `KeySigner` from a key reference."""

    def __init__(self) -> None:
        self.manifest = PluginManifest(
            name="key",
            version=__version__,
            kinds=("signer",),
            network=False,
            description="managed P-256 key: DSSE in a key-based Sigstore bundle v0.3 (offline)",
        )

    def open(self, key: str, environ: Mapping[str, str]) -> KeySigner:
        return KeySigner(load_private_key(resolve_key_path(key, environ)))


key_signer_plugin = _KeySignerPlugin()


# --- verification -------------------------------------------------------------------------------


class BundleError(StellaError):
    """A bundle is malformed, or no trusted key verifies its signature: the evidence is not OK.

    `reason` is a stable code: `malformed`, `unsupported`, `no-trusted-keys`, `unknown-key` (the hint
    names no trusted key and no trusted key verifies) or `bad-signature` (the hinted key, and every
    other trusted key, rejects the signature).
    """

    exit_code = 1

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class TrustedKey:
    """One trusted public key and where it came from (e.g. `trust/evidence-keys/ci.pub`)."""

    source: str
    public_key: ec.EllipticCurvePublicKey
    hint: str


class TrustedKeys(Mapping[str, TrustedKey]):
    """The public keys allowed to sign evidence, by key hint, in the order they were given.

    When two sources hold the same key, the first one is kept.
    """

    def __init__(self, keys: Iterable[TrustedKey] = ()) -> None:
        self._by_hint: dict[str, TrustedKey] = {}
        for trusted in keys:
            self._by_hint.setdefault(trusted.hint, trusted)

    @classmethod
    def from_files(cls, items: Iterable[tuple[str, bytes]]) -> TrustedKeys:
        """Load PEM public keys given as (source path, file bytes); a bad file is `InvalidInput`."""
        keys = []
        for source, data in items:
            public_key = load_public_key(data, source)
            keys.append(TrustedKey(source, public_key, key_hint(public_key)))
        return cls(keys)

    def __getitem__(self, hint: str) -> TrustedKey:
        return self._by_hint[hint]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_hint)

    def __len__(self) -> int:
        return len(self._by_hint)

    def __repr__(self) -> str:
        return f"TrustedKeys({[k.source for k in self._by_hint.values()]!r})"


@dataclass(frozen=True)
class VerifiedBundle:
    """What a verified bundle says: the signed bytes and type, and the trusted key that verified them."""

    payload: bytes
    payload_type: str
    hint: str
    """The hint of the key that verified (computed from the key, not copied from the bundle)."""
    source: str
    """Where that key came from."""


def _malformed(source: str, what: str) -> BundleError:
    return BundleError(f"{source}: malformed Sigstore bundle: {what}", reason="malformed")


def _object(value: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(source, f"{where} must be a JSON object")
    return value


def _base64(value: Any, source: str, where: str) -> bytes:
    if not isinstance(value, str):
        raise _malformed(source, f"{where} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise _malformed(source, f"{where} is not valid base64") from exc


def verify_bundle(bundle: bytes, keys: TrustedKeys, *, source: str) -> VerifiedBundle:
    """Verify the DSSE signature of a key-based Sigstore bundle with the trusted keys.

    `source` names the bundle in every error (e.g. `evidence/<hex>.sigstore.json`). The key whose hint
    the bundle names is tried first, then every other trusted key: the hint is unauthenticated, and
    only the signature decides. Raises `BundleError` when the bundle is malformed, is not a key-based
    DSSE bundle with exactly one signature, or no trusted key verifies it.
    """
    try:
        doc = json.loads(bundle.decode("utf-8"))  # UTF-8 only: json.loads(bytes) would guess UTF-16/32
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _malformed(source, f"not JSON: {exc}") from exc
    doc = _object(doc, source, "the bundle")
    media_type = doc.get("mediaType")
    if media_type not in ACCEPTED_BUNDLE_MEDIA_TYPES:
        raise BundleError(
            f"{source}: unsupported bundle mediaType {media_type!r} (expected {BUNDLE_MEDIA_TYPE!r})",
            reason="unsupported",
        )
    material = _object(doc.get("verificationMaterial"), source, "verificationMaterial")
    if "publicKey" not in material:
        raise BundleError(
            f"{source}: not a key-based bundle (verificationMaterial has no publicKey)", reason="unsupported"
        )
    hint = _object(material["publicKey"], source, "verificationMaterial.publicKey").get("hint", "")
    if not isinstance(hint, str):
        raise _malformed(source, "verificationMaterial.publicKey.hint must be a string")
    if "dsseEnvelope" not in doc:
        raise BundleError(f"{source}: not a DSSE bundle (it has no dsseEnvelope)", reason="unsupported")
    envelope = _object(doc["dsseEnvelope"], source, "dsseEnvelope")
    payload = _base64(envelope.get("payload"), source, "dsseEnvelope.payload")
    payload_type = envelope.get("payloadType")
    if not isinstance(payload_type, str) or not payload_type:
        raise _malformed(source, "dsseEnvelope.payloadType must be a non-empty string")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list):
        raise _malformed(source, "dsseEnvelope.signatures must be a list")
    if len(signatures) != 1:
        raise _malformed(source, f"expected exactly 1 DSSE signature, found {len(signatures)}")
    signature = _base64(
        _object(signatures[0], source, "dsseEnvelope.signatures[0]").get("sig"),
        source,
        "dsseEnvelope.signatures[0].sig",
    )

    if not keys:
        raise BundleError(
            f"{source}: no trusted evidence keys to verify the signature with", reason="no-trusted-keys"
        )
    hinted = keys.get(hint)
    candidates = ([hinted] if hinted else []) + [k for k in keys.values() if k is not hinted]
    message = pae(payload_type, payload)
    for trusted in candidates:
        try:
            trusted.public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return VerifiedBundle(payload, payload_type, trusted.hint, trusted.source)
    if hinted is not None:
        raise BundleError(
            f"{source}: bad signature: it does not verify with the key its hint names ({hinted.source}) "
            f"nor with any other of the {len(keys)} trusted key(s)",
            reason="bad-signature",
        )
    named = f"the hint {hint!r} names no trusted key" if hint else "the bundle has no key hint"
    raise BundleError(
        f"{source}: unknown key: {named}, and the signature verifies with none of the {len(keys)} "
        "trusted key(s)",
        reason="unknown-key",
    )
