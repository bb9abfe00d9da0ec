"""SSH signatures (`ssh-keygen -Y sign`, PROTOCOL.sshsig) verified in-process against allowed signers.

What `ssh-keygen -Y find-principals` and `ssh-keygen -Y verify` do, with no process per signature:
`AllowedSigners.parse` reads an OpenSSH allowed-signers file once (ssh-keygen(1), "ALLOWED SIGNERS"),
keeping each line it cannot use as a `Problem` with its line number instead of failing the whole file;
`SshSignature.parse` reads an armored signature; `AllowedSigners.verify` checks it over a message for a
namespace (default `git`) and returns the principal the file gives the signing key and the key's
fingerprint exactly as ssh-keygen prints it. Keys: ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa
(signatures rsa-sha2-256 or rsa-sha2-512, never SHA-1) and the FIDO security keys sk-ssh-ed25519 and
sk-ecdsa-sha2-nistp256 (their touch and PIN flags are read, not required, as ssh-keygen does), verified
with `cryptography`. Every failure is one `SshSignatureError` whose `code` is `not-ssh`, `malformed`,
`unknown-key` or `bad-signature`.

Pure: takes bytes (and, to check `valid-after`/`valid-before`, a time) and returns values. It must not
read files, run ssh-keygen or read the clock. As in ssh-keygen, a validity time written without `Z` is
local time. Not supported, and refused rather than guessed: certificates (a `cert-authority` line never
matches a plain key, and a signature made with a certificate names a key no line holds) and DSA (a line
with a DSA key is reported as a problem).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .errors import InvalidInput, Problem

NAMESPACE = "git"
"""The namespace `git commit -S` signs in (`ssh-keygen -Y sign -n git`)."""
BEGIN = b"-----BEGIN SSH SIGNATURE-----"
END = b"-----END SSH SIGNATURE-----"
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

FailureCode = Literal["not-ssh", "malformed", "unknown-key", "bad-signature"]
HashAlgorithm = Literal["sha256", "sha512"]

_MAGIC = b"SSHSIG"
_VERSION = 1
_WHITESPACE = " \t\r\n"
_RSA_MIN_BITS = 1024  # OpenSSH refuses smaller RSA keys (SSH_RSA_MINIMUM_MODULUS_SIZE)
_RSA_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA512]] = {
    "rsa-sha2-256": hashes.SHA256,
    "rsa-sha2-512": hashes.SHA512,
}
_EC_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "ecdsa-sha2-nistp256": hashes.SHA256,
    "ecdsa-sha2-nistp384": hashes.SHA384,
    "ecdsa-sha2-nistp521": hashes.SHA512,
}
_EC_CURVES = {
    "ecdsa-sha2-nistp256": "secp256r1",
    "ecdsa-sha2-nistp384": "secp384r1",
    "ecdsa-sha2-nistp521": "secp521r1",
}
# Key types OpenSSH knows but this module does not verify: a line with one is a problem, not "bad options".
_KNOWN_UNSUPPORTED = ("ssh-dss",)


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


def fingerprint(blob: bytes) -> str:
    """A public key's fingerprint as `ssh-keygen -l` prints it: `SHA256:` and unpadded base64."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


# --- the SSH wire format (RFC 4251 §5) --------------------------------------------------------------


class _WireError(Exception):
    """Bytes that do not follow the SSH wire format."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._data):
            raise _WireError("truncated")
        chunk = self._data[self._at : self._at + size]
        self._at += size
        return chunk

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def string(self) -> bytes:
        return self.take(self.u32())

    def text(self) -> str:
        raw = self.string()
        if b"\0" in raw:
            raise _WireError("a text field holds a NUL byte")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _WireError("a text field is not UTF-8") from exc

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise _WireError("a negative integer")
        return int.from_bytes(raw, "big")

    def end(self) -> None:
        if self._at != len(self._data):
            raise _WireError("trailing data")


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


# --- keys -------------------------------------------------------------------------------------------

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
        reader = _Reader(blob)
        try:
            key_type = reader.text()
        except _WireError as exc:
            raise ValueError(f"not an SSH public key ({exc})") from exc
        if key_type not in KEY_TYPES:
            raise ValueError(f"key type {key_type} is not supported (supported: {', '.join(KEY_TYPES)})")
        if key_type in (SK_ED25519, SK_ECDSA):
            try:
                return cls._security_key(key_type, reader)
            except (_WireError, ValueError) as exc:
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
    def _security_key(cls, key_type: str, reader: _Reader) -> SshPublicKey:
        """A FIDO key (PROTOCOL.u2f): the public key, then the application it was made for."""
        crypto: _CryptoKey
        if key_type == SK_ED25519:
            public = reader.string()
            crypto = ed25519.Ed25519PublicKey.from_public_bytes(public)
            head = _string(key_type.encode()) + _string(public)
        else:
            curve = reader.text()
            if curve != "nistp256":
                raise ValueError(f"curve {curve}, not nistp256")
            crypto = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), reader.string())
            point = crypto.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            head = _string(key_type.encode()) + _string(curve.encode()) + _string(point)
        application = reader.text()
        reader.end()
        return cls(key_type, head + _string(application.encode()), crypto, application)


@functools.lru_cache(maxsize=1024)
def _load_key(blob: bytes) -> SshPublicKey:
    return SshPublicKey._read(blob)


def _is_type(key: _CryptoKey, key_type: str) -> bool:
    if key_type == "ssh-ed25519":
        return isinstance(key, ed25519.Ed25519PublicKey)
    if key_type == "ssh-rsa":
        return isinstance(key, rsa.RSAPublicKey)
    return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[key_type]


# --- signatures -------------------------------------------------------------------------------------


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
        except _WireError as exc:
            raise SshSignatureError("malformed", f"malformed SSH signature: {exc}") from exc

    @classmethod
    def _from_blob(cls, blob: bytes) -> SshSignature:
        reader = _Reader(blob)
        if reader.take(len(_MAGIC)) != _MAGIC:
            raise _WireError("not an SSHSIG blob (no SSHSIG magic)")
        version = reader.u32()
        if version != _VERSION:
            raise _WireError(f"SSHSIG version {version} is not supported (only {_VERSION})")
        public_key = reader.string()
        namespace = reader.text()
        reader.string()  # reserved
        hash_algorithm = reader.text()
        wrapped = reader.string()
        reader.end()
        if not namespace:
            raise _WireError("the namespace is empty")
        if hash_algorithm not in ("sha256", "sha512"):
            raise _WireError(f"hash algorithm {hash_algorithm!r} is neither sha256 nor sha512")
        inner = _Reader(wrapped)
        algorithm = inner.text()
        signature = inner.string()
        sk_flags = sk_counter = None
        if algorithm in (SK_ED25519, SK_ECDSA):
            sk_flags, sk_counter = inner.take(1)[0], inner.u32()
        inner.end()
        key_type = _Reader(public_key).text()
        key = None
        if key_type in KEY_TYPES:
            try:
                key = SshPublicKey.from_blob(public_key)
            except ValueError as exc:
                raise _WireError(f"the signing key cannot be read: {exc}") from exc
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
            + _string(namespace.encode())
            + _string(b"")
            + _string(self.hash_algorithm.encode())
            + _string(digest)
        )

    def check(self, message: bytes, namespace: str = NAMESPACE) -> None:
        """Verify the signature with the key it carries, trusting nobody (`ssh-keygen -Y check-novalidate`).

        Raises `SshSignatureError`: `unknown-key` for a key type this module does not verify,
        `bad-signature` when it does not verify over `message` in `namespace`.
        """
        if self.key is None:
            raise SshSignatureError("unknown-key", _unsupported(self.key_type))
        why = _why_not(self.key, self, message, namespace)
        if why:
            raise SshSignatureError("bad-signature", why)


def _unsupported(key_type: str) -> str:
    return f"signed with a {key_type} key, a type this verifier does not support ({', '.join(KEY_TYPES)})"


def _why_not(key: SshPublicKey, sig: SshSignature, message: bytes, namespace: str) -> str | None:
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
                numbers = _Reader(sig.signature)
                r, s = numbers.mpint(), numbers.mpint()
                numbers.end()
            except _WireError:
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


# --- allowed signers --------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


def match_list(value: str, patterns: tuple[str, ...]) -> bool:
    """OpenSSH's `match_pattern_list`: some pattern matches `value` and no `!`-negated one does.

    Patterns use `*` (any run) and `?` (any one character), case-sensitively.
    """
    positive = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _pattern(pattern[1:] if negated else pattern).fullmatch(value):
            if negated:
                return False
            positive = True
    return positive


@dataclass(frozen=True)
class AllowedSigner:
    """One usable line of an allowed-signers file."""

    line: int
    principals: tuple[str, ...]
    """The principals as written: comma-separated patterns (`*`, `?`, `!` to negate)."""
    key: SshPublicKey
    namespaces: tuple[str, ...] | None = None
    """`namespaces="..."` patterns; None: every namespace."""
    valid_after: datetime | None = None
    valid_before: datetime | None = None
    cert_authority: bool = False
    """A `cert-authority` line: trusts certificates, which this module does not verify (never matches)."""

    def admits(self, principal: str) -> bool:
        """Whether the line's principal patterns accept `principal` (as `ssh-keygen -Y verify -I`)."""
        return match_list(principal, self.principals)

    def allows(self, namespace: str) -> bool:
        return self.namespaces is None or match_list(namespace, self.namespaces)

    def valid_at(self, at: datetime) -> bool:
        when = int(at.timestamp())
        if self.valid_after is not None and when < int(self.valid_after.timestamp()):
            return False
        return self.valid_before is None or when <= int(self.valid_before.timestamp())

    @property
    def listed(self) -> tuple[str, ...]:
        """The principals `ssh-keygen -Y find-principals` prints for this line (up to an empty one)."""
        listed: list[str] = []
        for principal in self.principals:
            if not principal:
                break
            listed.append(principal)
        return tuple(listed)

    @property
    def identity(self) -> str | None:
        """The first principal of the line that names somebody (not negated, and admitted by the line)."""
        return next((p for p in self.listed if not p.startswith("!") and self.admits(p)), None)


@dataclass(frozen=True)
class Verified:
    """A signature that verified: who the allowed-signers file says signed it, and with which key."""

    principal: str
    fingerprint: str
    """`SHA256:...`, as `ssh-keygen -l` prints it."""
    key_type: str
    namespace: str
    line: int
    """The allowed-signers line that admitted the key."""


@dataclass(frozen=True)
class AllowedSigners:
    """An OpenSSH allowed-signers file, parsed once: its usable lines and its problems."""

    source: str
    signers: tuple[AllowedSigner, ...]
    problems: tuple[Problem, ...]
    """Lines that could not be used, with their line numbers; the other lines still count."""
    _by_key: dict[bytes, tuple[AllowedSigner, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_key: dict[bytes, list[AllowedSigner]] = {}
        for signer in self.signers:
            by_key.setdefault(signer.key.blob, []).append(signer)
        object.__setattr__(self, "_by_key", {blob: tuple(lines) for blob, lines in by_key.items()})

    @classmethod
    def parse(cls, data: bytes, source: str = "allowed_signers") -> AllowedSigners:
        """Parse `principals [options] keytype base64-key [comment]` lines; skip `#` comments and blanks."""
        signers: list[AllowedSigner] = []
        problems: list[Problem] = []
        for number, raw in enumerate(data.split(b"\n"), start=1):
            try:
                signer = _parse_line(raw, number)
            except _LineError as exc:
                problems.append(Problem(source, number, str(exc)))
                continue
            if signer is not None:
                signers.append(signer)
        return cls(source, tuple(signers), tuple(problems))

    def lines_for(self, key: SshPublicKey) -> tuple[AllowedSigner, ...]:
        """Every line that holds `key`, in file order."""
        return self._by_key.get(key.blob, ())

    def find_principals(
        self, signature: SshSignature | bytes, *, at: datetime | None = None
    ) -> tuple[str, ...]:
        """What `ssh-keygen -Y find-principals` prints: the principals of the first line holding the key.

        Like ssh-keygen, looks at no namespace; `at` (None: not checked) must lie in the line's validity.
        """
        sig = signature if isinstance(signature, SshSignature) else SshSignature.parse(signature)
        if sig.key is None:
            return ()
        for line in self.lines_for(sig.key):
            if not line.cert_authority and (at is None or line.valid_at(at)):
                return line.listed
        return ()

    def verify(
        self,
        message: bytes,
        signature: SshSignature | bytes,
        *,
        namespace: str = NAMESPACE,
        principal: str | None = None,
        at: datetime | None = None,
    ) -> Verified:
        """Verify an armored SSH signature over `message`, as `ssh-keygen -Y verify -n <namespace>` would.

        The key must be on a line that allows `namespace`, is valid at `at` (None: validity not checked;
        ssh-keygen checks it against the current time) and, when `principal` is given, admits it (as
        `-I`). The principal returned is `principal`, or else the first principal of the first such line.
        Raises `SshSignatureError` (`not-ssh`, `malformed`, `unknown-key`, `bad-signature`).
        """
        sig = signature if isinstance(signature, SshSignature) else SshSignature.parse(signature)
        if sig.key is None:
            raise SshSignatureError("unknown-key", _unsupported(sig.key_type))
        lines = self.lines_for(sig.key)
        chosen: tuple[AllowedSigner, str] | None = None
        excluded: list[str] = []
        for line in lines:
            why = _excluded(line, namespace, principal, at)
            if why:
                excluded.append(f"line {line.line} {why}")
                continue
            who = principal if principal is not None else line.identity
            if who is None:
                excluded.append(f"line {line.line} names nobody (only negated principals)")
                continue
            chosen = (line, who)
            break
        if chosen is None:
            held = f"{self.source} does not list the {sig.key_type} key {sig.fingerprint}"
            if excluded:
                held = (
                    f"{self.source} lists the {sig.key_type} key {sig.fingerprint}, but {'; '.join(excluded)}"
                )
            raise SshSignatureError("unknown-key", held)
        line, who = chosen
        why = _why_not(sig.key, sig, message, namespace)
        if why:
            raise SshSignatureError("bad-signature", why)
        return Verified(who, sig.key.fingerprint, sig.key.key_type, namespace, line.line)


def _excluded(line: AllowedSigner, namespace: str, principal: str | None, at: datetime | None) -> str | None:
    if line.cert_authority:
        return "is a cert-authority (certificates are not supported)"
    if principal is not None and not line.admits(principal):
        return f"does not admit principal {principal}"
    if not line.allows(namespace):
        return f'does not allow namespace "{namespace}"'
    if at is not None and not line.valid_at(at):
        return f"is not valid at {at.isoformat()}"
    return None


# --- parsing one line (as OpenSSH's parse_principals_key_and_options) --------------------------------


class _LineError(Exception):
    """Why one allowed-signers line cannot be used."""


def _parse_line(raw: bytes, number: int) -> AllowedSigner | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _LineError("the line is not UTF-8") from exc
    rest = text.lstrip(_WHITESPACE)
    if not rest or rest.startswith("#"):
        return None
    principals, rest = _principals(rest)
    first = rest.split(None, 1)[0] if rest.strip() else ""
    options = ""
    if not _is_key_type(first):
        options, rest = _options_text(rest)
        rest = rest.lstrip(" \t")
        if not rest.strip():
            raise _LineError("missing key (expected `principals [options] keytype base64-key`)")
    key = _key(rest)
    namespaces, after, before, authority = _options(options)
    return AllowedSigner(number, tuple(principals.split(",")), key, namespaces, after, before, authority)


def _principals(text: str) -> tuple[str, str]:
    """The principals field (which may be quoted) and the rest of the line, as OpenSSH's `strdelimw`."""
    found = re.search(r'[ \t\r\n"]', text)
    if found is None:
        raise _LineError("invalid line: principals but no key")
    at = found.start()
    if text[at] != '"':
        return text[:at], text[at + 1 :].lstrip(_WHITESPACE)
    unquoted = text[:at] + text[at + 1 :]
    close = unquoted.find('"', at)
    if close < 0:
        raise _LineError("invalid line: no closing quote after the principals")
    return unquoted[:close], unquoted[close + 1 :].lstrip(_WHITESPACE)


def _is_key_type(token: str) -> bool:
    return token in KEY_TYPES or token in _KNOWN_UNSUPPORTED or token.endswith("-cert-v01@openssh.com")


def _options_text(text: str) -> tuple[str, str]:
    """Split the options from the key: up to the first space or tab outside quotes."""
    quoted = False
    at = 0
    while at < len(text) and (quoted or text[at] not in " \t"):
        if text[at] == "\\" and text[at + 1 : at + 2] == '"':
            at += 1
        elif text[at] == '"':
            quoted = not quoted
        at += 1
    if quoted:
        raise _LineError("invalid options: no closing quote")
    return text[:at], text[at:]


def _key(text: str) -> SshPublicKey:
    fields = text.split()
    if len(fields) < 2:
        raise _LineError("invalid key: expected `keytype base64-key`")
    key_type, encoded = fields[0], fields[1]
    if not _is_key_type(key_type):
        raise _LineError(f"invalid key: unknown key type {key_type}")
    if key_type not in KEY_TYPES:
        raise _LineError(f"key type {key_type} is not supported (supported: {', '.join(KEY_TYPES)})")
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _LineError("invalid key: not base64") from exc
    try:
        inner = _Reader(blob).text()
    except _WireError as exc:
        raise _LineError("invalid key: not an SSH public key") from exc
    if inner != key_type:
        raise _LineError(f"invalid key: a {inner} key written as {key_type}")
    try:
        return SshPublicKey.from_blob(blob)
    except ValueError as exc:
        raise _LineError(f"invalid key: {exc}") from exc


def _options(text: str) -> tuple[tuple[str, ...] | None, datetime | None, datetime | None, bool]:
    """`cert-authority`, `namespaces=`, `valid-after=`, `valid-before=` (OpenSSH's sshsigopt_parse)."""
    namespaces: tuple[str, ...] | None = None
    after: datetime | None = None
    before: datetime | None = None
    authority = False
    at = 0
    while at < len(text) and text[at] not in " \t":
        lower = text[at:].lower()
        if lower.startswith("cert-authority"):
            authority = True
            at += len("cert-authority")
        elif lower.startswith("namespaces="):
            if namespaces is not None:
                raise _LineError('bad options: multiple "namespaces" clauses')
            value, at = _dequote(text, at + len("namespaces="))
            namespaces = tuple(value.split(","))
        elif lower.startswith(("valid-after=", "valid-before=")):
            name = "valid-after" if lower.startswith("valid-after=") else "valid-before"
            if (after if name == "valid-after" else before) is not None:
                raise _LineError(f'bad options: multiple "{name}" clauses')
            value, at = _dequote(text, at + len(name) + 1)
            try:
                when = _absolute_time(value)
            except ValueError as exc:
                raise _LineError(
                    f'bad options: invalid "{name}" time {value!r} (YYYYMMDD[HHMM[SS]][Z])'
                ) from exc
            if name == "valid-after":
                after = when
            else:
                before = when
        if at >= len(text) or text[at] in " \t":
            break
        if text[at] != ",":
            raise _LineError(f"bad options: unknown key option at {text[at:]!r}")
        at += 1
        if at >= len(text):
            raise _LineError("bad options: unexpected end of options")
    if after is not None and before is not None and before <= after:
        raise _LineError('bad options: "valid-before" time is before "valid-after"')
    return namespaces, after, before, authority


def _dequote(text: str, at: int) -> tuple[str, int]:
    """A double-quoted option value starting at `at` (`\\"` stands for a quote) and where it ends."""
    if text[at : at + 1] != '"':
        raise _LineError("bad options: missing start quote")
    value: list[str] = []
    at += 1
    while at < len(text) and text[at] != '"':
        if text[at] == "\\" and text[at + 1 : at + 2] == '"':
            at += 1
        value.append(text[at])
        at += 1
    if at >= len(text):
        raise _LineError("bad options: missing end quote")
    return "".join(value), at + 1


def _absolute_time(value: str) -> datetime:
    """`YYYYMMDD[HHMM[SS]]`, then `Z` or `UTC` for UTC, else local time (OpenSSH's parse_absolute_time)."""
    utc = False
    digits = value
    if len(digits) > 1 and digits[-1] in "zZ":
        utc, digits = True, digits[:-1]
    elif len(digits) > 3 and digits[-3:].upper() == "UTC":
        utc, digits = True, digits[:-3]
    if len(digits) not in (8, 12, 14) or not (digits.isascii() and digits.isdigit()):
        raise ValueError(value)
    hour, minute, second = (int(digits[i : i + 2] or 0) for i in (8, 10, 12))
    when = datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]), hour, minute, second)
    return when.replace(tzinfo=UTC) if utc else when.astimezone()
