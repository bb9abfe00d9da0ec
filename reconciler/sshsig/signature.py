"""Armored SSH signatures (PROTOCOL.sshsig): reading them, and verifying one with a given key.

`SshSignature.parse` reads the armour and the SSHSIG blob; `why_not` checks the signature over a
message in a namespace with `cryptography`. Every failure is one `SshSignatureError` with a stable
`code`. It must not decide whom to trust: which keys are allowed is `allowed_signers.py`'s job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..errors import InvalidInput
from .keys import KEY_TYPES, SK_ECDSA, SK_ED25519, SshPublicKey, fingerprint
from .wire import WireError, WireReader, wire_string

NAMESPACE = "git"
"""The namespace `git commit -S` signs in (`ssh-keygen -Y sign -n git`)."""
BEGIN = b"-----BEGIN SSH SIGNATURE-----"
END = b"-----END SSH SIGNATURE-----"

FailureCode = Literal["not-ssh", "malformed", "unknown-key", "bad-signature"]
HashAlgorithm = Literal["sha256", "sha512"]

_MAGIC = b"SSHSIG"
_VERSION = 1
_RSA_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA512]] = {
    "rsa-sha2-256": hashes.SHA256,
    "rsa-sha2-512": hashes.SHA512,
}
_EC_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "ecdsa-sha2-nistp256": hashes.SHA256,
    "ecdsa-sha2-nistp384": hashes.SHA384,
    "ecdsa-sha2-nistp521": hashes.SHA512,
}


class SshSignatureError(InvalidInput):
    """An SSH signature that cannot be accepted; `code` says why, as a stable string.

    `not-ssh`: not an armored SSH signature. `malformed`: armored, but the blob cannot be read.
    `unknown-key`: no allowed-signers line holds the signing key (for that namespace, principal and time).
    `bad-signature`: the key is listed, but the signature does not verify over these bytes, or was made
    for another namespace.
    """

    def __init__(self, code: FailureCode, message: str) -> None:
        super().__init__(message)
        self.code: FailureCode = code


@dataclass(frozen=True)
class SshSignature:
    """An armored SSH signature (PROTOCOL.sshsig), read but not yet verified."""

    public_key: bytes
    """The signing key's wire encoding, as the signature carries it."""
    key_type: str
    namespace: str
    hash_algorithm: HashAlgorithm
    algorithm: str
    """The signature algorithm: `ssh-ed25519`, `ecdsa-sha2-nistp256`, `rsa-sha2-512`, ..."""
    signature: bytes
    """The algorithm's signature bytes (for ECDSA, the SSH encoding of r and s)."""
    sk_flags: int | None = None
    """For a security key: the flags the key signed (0x01: user present, 0x04: user verified)."""
    sk_counter: int | None = None
    """For a security key: its signature counter."""
    key: SshPublicKey | None = field(default=None, repr=False, compare=False)
    """The signing key, when it is of a supported type."""

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint if self.key else fingerprint(self.public_key)

    @classmethod
    def parse(cls, armored: bytes) -> SshSignature:
        """Read `-----BEGIN SSH SIGNATURE-----` ... `-----END SSH SIGNATURE-----` (leading blanks allowed).

        Raises `SshSignatureError` with code `not-ssh` (no such header) or `malformed`.
        """
        data = armored.lstrip()
        if not data.startswith(BEGIN):
            raise SshSignatureError(
                "not-ssh", "not an armored SSH signature (no -----BEGIN SSH SIGNATURE-----)"
            )
        rest = data[len(BEGIN) :]
        if rest.startswith(b"\r\n"):
            rest = rest[2:]
        elif rest.startswith(b"\n"):
            rest = rest[1:]
        else:
            raise SshSignatureError("malformed", "malformed SSH signature: no line break after the header")
        footer = rest.find(b"\n" + END)
        if footer < 0:
            raise SshSignatureError("malformed", "malformed SSH signature: no -----END SSH SIGNATURE-----")
        try:
            blob = base64.b64decode(re.sub(rb"\s+", b"", rest[:footer]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SshSignatureError("malformed", f"malformed SSH signature: not base64 ({exc})") from exc
        try:
            return cls._from_blob(blob)
        except WireError as exc:
            raise SshSignatureError("malformed", f"malformed SSH signature: {exc}") from exc

    @classmethod
    def _from_blob(cls, blob: bytes) -> SshSignature:
        reader = WireReader(blob)
        if reader.take(len(_MAGIC)) != _MAGIC:
            raise WireError("not an SSHSIG blob (no SSHSIG magic)")
        version = reader.u32()
        if version != _VERSION:
            raise WireError(f"SSHSIG version {version} is not supported (only {_VERSION})")
        public_key = reader.string()
        namespace = reader.text()
        reader.string()  # reserved
        hash_algorithm = reader.text()
        wrapped = reader.string()
        reader.end()
        if not namespace:
            raise WireError("the namespace is empty")
        if hash_algorithm not in ("sha256", "sha512"):
            raise WireError(f"hash algorithm {hash_algorithm!r} is neither sha256 nor sha512")
        inner = WireReader(wrapped)
        algorithm = inner.text()
        signature = inner.string()
        sk_flags = sk_counter = None
        if algorithm in (SK_ED25519, SK_ECDSA):
            sk_flags, sk_counter = inner.take(1)[0], inner.u32()
        inner.end()
        key_type = WireReader(public_key).text()
        key = None
        if key_type in KEY_TYPES:
            try:
                key = SshPublicKey.from_blob(public_key)
            except ValueError as exc:
                raise WireError(f"the signing key cannot be read: {exc}") from exc
        return cls(
            public_key=public_key,
            key_type=key_type,
            namespace=namespace,
            hash_algorithm="sha256" if hash_algorithm == "sha256" else "sha512",
            algorithm=algorithm,
            signature=signature,
            sk_flags=sk_flags,
            sk_counter=sk_counter,
            key=key,
        )

    def signed_data(self, message: bytes, namespace: str) -> bytes:
        """The bytes the key signed for `message` in `namespace` (PROTOCOL.sshsig §3)."""
        digest = hashlib.new(self.hash_algorithm, message).digest()
        return (
            _MAGIC
            + wire_string(namespace.encode())
            + wire_string(b"")
            + wire_string(self.hash_algorithm.encode())
            + wire_string(digest)
        )

    def check(self, message: bytes, namespace: str = NAMESPACE) -> None:
        """Verify the signature with the key it carries, trusting nobody (`ssh-keygen -Y check-novalidate`).

        Raises `SshSignatureError`: `unknown-key` for a key type this module does not verify,
        `bad-signature` when it does not verify over `message` in `namespace`.
        """
        if self.key is None:
            raise SshSignatureError("unknown-key", unsupported_key(self.key_type))
        why = why_not(self.key, self, message, namespace)
        if why:
            raise SshSignatureError("bad-signature", why)


def unsupported_key(key_type: str) -> str:
    return f"signed with a {key_type} key, a type this verifier does not support ({', '.join(KEY_TYPES)})"


def why_not(key: SshPublicKey, sig: SshSignature, message: bytes, namespace: str) -> str | None:
    """Why `sig` is not `key`'s signature over `message` in `namespace` (None: it is)."""
    if not namespace:
        raise ValueError("the namespace to verify in must not be empty")
    if sig.namespace != namespace:
        return f'the signature was made for namespace "{sig.namespace}", not "{namespace}"'
    data = sig.signed_data(message, namespace)
    verifier = key.crypto
    if key.key_type != "ssh-rsa" and sig.algorithm != key.key_type:
        return f"a {key.key_type} key cannot make a {sig.algorithm} signature"
    if key.application is not None:
        # PROTOCOL.u2f: the key signed H(application) || flags || counter || H(data)
        if sig.sk_flags is None or sig.sk_counter is None:  # pragma: no cover - parse reads them
            return "the security key signature has no flags and counter"
        data = (
            hashlib.sha256(key.application.encode()).digest()
            + bytes([sig.sk_flags])
            + sig.sk_counter.to_bytes(4, "big")
            + hashlib.sha256(data).digest()
        )
    try:
        if isinstance(verifier, ed25519.Ed25519PublicKey):
            verifier.verify(sig.signature, data)
        elif isinstance(verifier, ec.EllipticCurvePublicKey):
            try:
                numbers = WireReader(sig.signature)
                r, s = numbers.mpint(), numbers.mpint()
                numbers.end()
            except WireError:
                return f"the {sig.algorithm} signature is not two integers"
            ec_hash = hashes.SHA256 if key.application is not None else _EC_HASHES[key.key_type]
            verifier.verify(encode_dss_signature(r, s), data, ec.ECDSA(ec_hash()))
        else:
            rsa_hash = _RSA_HASHES.get(sig.algorithm)
            if rsa_hash is None:
                return f"RSA signature algorithm {sig.algorithm} is not accepted ({', '.join(_RSA_HASHES)})"
            size = (verifier.key_size + 7) // 8
            if len(sig.signature) > size:
                return "the RSA signature is longer than the key"
            verifier.verify(sig.signature.rjust(size, b"\0"), data, padding.PKCS1v15(), rsa_hash())
    except InvalidSignature:
        return f"the {sig.algorithm} signature by {key.fingerprint} does not verify over these bytes"
    return None
