"""SSH public keys: the supported key types, reading a key's wire encoding, and its fingerprint.

Keys are loaded with `cryptography` (and, for FIDO security keys, read per PROTOCOL.u2f). It must not
verify signatures (`signature.py` does) nor read allowed-signers files.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .wire import WireError, WireReader, wire_string

SK_ED25519 = "sk-ssh-ed25519@openssh.com"
SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com"
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    SK_ED25519,
    SK_ECDSA,
)
"""The key types this module verifies (`sk-`: FIDO security keys, as `ssh-keygen -t ed25519-sk` makes)."""

_RSA_MIN_BITS = 1024  # OpenSSH refuses smaller RSA keys (SSH_RSA_MINIMUM_MODULUS_SIZE)
_EC_CURVES = {
    "ecdsa-sha2-nistp256": "secp256r1",
    "ecdsa-sha2-nistp384": "secp384r1",
    "ecdsa-sha2-nistp521": "secp521r1",
}


def fingerprint(blob: bytes) -> str:
    """A public key's fingerprint as `ssh-keygen -l` prints it: `SHA256:` and unpadded base64."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


_CryptoKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class SshPublicKey:
    """An SSH public key: its type, its canonical wire encoding, and the key `cryptography` verifies with."""

    key_type: str
    blob: bytes
    """The key's wire encoding (what the fingerprint is taken over); two keys are equal when these are."""
    crypto: _CryptoKey = field(repr=False, compare=False)
    application: str | None = None
    """A security key's application (`ssh:` by default); None for other keys."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    def openssh(self) -> str:
        """The key as an authorized_keys or allowed-signers line writes it: `<type> <base64>`."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"

    @classmethod
    def from_blob(cls, blob: bytes) -> SshPublicKey:
        """Read a key's wire encoding (remembered: a few keys sign thousands of commits). Raises
        ValueError saying why it cannot be used."""
        return _load_key(blob)

    @classmethod
    def _read(cls, blob: bytes) -> SshPublicKey:
        reader = WireReader(blob)
        try:
            key_type = reader.text()
        except WireError as exc:
            raise ValueError(f"not an SSH public key ({exc})") from exc
        if key_type not in KEY_TYPES:
            raise ValueError(f"key type {key_type} is not supported (supported: {', '.join(KEY_TYPES)})")
        if key_type in (SK_ED25519, SK_ECDSA):
            try:
                return cls._security_key(key_type, reader)
            except (WireError, ValueError) as exc:
                raise ValueError(f"not a valid {key_type} key ({exc})") from exc
        try:
            loaded = serialization.load_ssh_public_key(key_type.encode() + b" " + base64.b64encode(blob))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not a valid {key_type} key ({exc})") from exc
        if not isinstance(loaded, _CryptoKey) or not _is_type(loaded, key_type):
            raise ValueError(f"not a valid {key_type} key")
        if isinstance(loaded, rsa.RSAPublicKey) and loaded.key_size < _RSA_MIN_BITS:
            raise ValueError(f"the RSA key has {loaded.key_size} bits, fewer than OpenSSH accepts (1024)")
        encoded = loaded.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return cls(key_type, base64.b64decode(encoded.split(b" ")[1]), loaded)

    @classmethod
    def _security_key(cls, key_type: str, reader: WireReader) -> SshPublicKey:
        """A FIDO key (PROTOCOL.u2f): the public key, then the application it was made for."""
        crypto: _CryptoKey
        if key_type == SK_ED25519:
            public = reader.string()
            crypto = ed25519.Ed25519PublicKey.from_public_bytes(public)
            head = wire_string(key_type.encode()) + wire_string(public)
        else:
            curve = reader.text()
            if curve != "nistp256":
                raise ValueError(f"curve {curve}, not nistp256")
            crypto = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), reader.string())
            point = crypto.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            head = wire_string(key_type.encode()) + wire_string(curve.encode()) + wire_string(point)
        application = reader.text()
        reader.end()
        return cls(key_type, head + wire_string(application.encode()), crypto, application)


@functools.lru_cache(maxsize=1024)
def _load_key(blob: bytes) -> SshPublicKey:
    return SshPublicKey._read(blob)


def _is_type(key: _CryptoKey, key_type: str) -> bool:
    if key_type == "ssh-ed25519":
        return isinstance(key, ed25519.Ed25519PublicKey)
    if key_type == "ssh-rsa":
        return isinstance(key, rsa.RSAPublicKey)
    return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[key_type]
