"""Native SSH signature verification against real `ssh-keygen -Y sign` signatures and real signed commits.

Every verdict is compared with ssh-keygen's own where that is cheap: `-Y verify` (accepts or not, and the
fingerprint it prints), `-Y find-principals`, `-l` (fingerprints), and the line numbers of the lines
`ssh-keygen` complains about in an allowed-signers file.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from reconciler.errors import Problem
from reconciler.identity import Verifier, verify_signed
from reconciler.protocols import Actor
from reconciler.repo import Repo
from reconciler.sshsig import (
    AllowedSigners,
    SshSignature,
    SshSignatureError,
    Verified,
    fingerprint,
)
from tests.support.repos import git, make_repo

AT = datetime(2030, 1, 1, tzinfo=UTC)  # the fixed clock every validity window is checked against
KEYGEN_AT = "-Overify-time=20300101000000Z"
MESSAGE = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@example.com> 1 +0000\n\nhello\n"
KEY_TYPES = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "rsa": ["-t", "rsa", "-b", "2048"],
    "mallory": ["-t", "ed25519"],  # a key nobody lists
}
SSH_TYPE = {
    "ed25519": "ssh-ed25519",
    "ecdsa": "ecdsa-sha2-nistp256",
    "ecdsa384": "ecdsa-sha2-nistp384",
    "ecdsa521": "ecdsa-sha2-nistp521",
    "rsa": "ssh-rsa",
    "mallory": "ssh-ed25519",
}


@dataclass(frozen=True)
class Key:
    name: str
    path: Path
    public: str
    """`<type> <base64>` as an allowed-signers line writes it."""
    fingerprint: str
    """What `ssh-keygen -lf` prints."""

    @property
    def identity(self) -> str:
        return f"{self.name}@example.com"


Keys = dict[str, Key]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("ssh-keys")
    made = {}
    for name, argv in KEY_TYPES.items():
        path = directory / name
        subprocess.run(["ssh-keygen", "-q", *argv, "-N", "", "-C", name, "-f", str(path)], check=True)
        public = " ".join(path.with_name(name + ".pub").read_text().split()[:2])
        listed = _run("ssh-keygen", "-lf", f"{path}.pub").stdout.split()[1]
        made[name] = Key(name, path, public, listed)
    return made


def _run(*argv: str, data: bytes | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, input=data, capture_output=True, timeout=30)
    return subprocess.CompletedProcess(argv, done.returncode, done.stdout.decode(), done.stderr.decode())


def sign(key: Key, message: bytes = MESSAGE, namespace: str = "git", *options: str) -> bytes:
    """`ssh-keygen -Y sign`: the armored signature of `message`, from stdin to stdout."""
    argv = ["ssh-keygen", "-Y", "sign", "-f", str(key.path), "-n", namespace, *options]
    done = subprocess.run(argv, input=message, capture_output=True, check=True, timeout=30)
    return done.stdout


def allowed_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "allowed_signers"
    path.write_text(text)
    return path


def keygen_verify(
    allowed: Path, signature: bytes, principal: str, message: bytes = MESSAGE, namespace: str = "git"
) -> str | None:
    """The fingerprint ssh-keygen says verified (`Good "<ns>" signature for ...`), or None if it refused."""
    sig = allowed.with_name("message.sig")
    sig.write_bytes(signature)
    argv = ["-Y", "verify", "-f", str(allowed), "-I", principal, "-n", namespace, "-s", str(sig), KEYGEN_AT]
    done = _run("ssh-keygen", *argv, data=message)
    good = re.search(r"Good \"[^\"]+\" signature for .+ with \S+ key (SHA256:\S+)", done.stdout)
    return good[1] if done.returncode == 0 and good else None


def keygen_find(allowed: Path, signature: bytes) -> list[str]:
    sig = allowed.with_name("message.sig")
    sig.write_bytes(signature)
    done = _run("ssh-keygen", "-Y", "find-principals", "-f", str(allowed), "-s", str(sig), KEYGEN_AT)
    return done.stdout.split()


def lines(keys: Keys, template: str) -> str:
    """An allowed-signers file from a template naming keys as `{ed25519}`, `{rsa}`, ..."""
    return template.format(**{name: key.public for name, key in keys.items()})


# --- good signatures --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ed25519", "ecdsa", "ecdsa384", "ecdsa521", "rsa"])
def test_a_good_signature_names_the_principal_and_fingerprint_ssh_keygen_does(
    keys: Keys, tmp_path: Path, name: str
) -> None:
    key = keys[name]
    text = lines(keys, "mallory@example.com {mallory}\n") + f"{key.identity} {key.public}\n"
    signature = sign(key)

    verified = AllowedSigners.parse(text.encode(), "allowed").verify(MESSAGE, signature, at=AT)

    assert verified == Verified(key.identity, key.fingerprint, SSH_TYPE[name], "git", 2)
    path = allowed_file(tmp_path, text)
    assert keygen_find(path, signature) == [key.identity]
    assert keygen_verify(path, signature, key.identity) == key.fingerprint


@pytest.mark.parametrize("name", ["ed25519", "ecdsa", "rsa"])
def test_a_signature_parses_into_its_fields(keys: Keys, name: str) -> None:
    parsed = SshSignature.parse(sign(keys[name]))
    algorithm = "rsa-sha2-512" if name == "rsa" else SSH_TYPE[name]
    assert (parsed.key_type, parsed.namespace, parsed.hash_algorithm, parsed.algorithm) == (
        SSH_TYPE[name],
        "git",
        "sha512",
        algorithm,
    )
    assert parsed.fingerprint == keys[name].fingerprint
    assert parsed.key is not None and parsed.key.openssh() == keys[name].public
    assert fingerprint(parsed.public_key) == keys[name].fingerprint


# --- verdicts, table-driven -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    allowed: str
    """The allowed-signers file, keys as `{ed25519}`, `{ecdsa}`, `{rsa}`, `{mallory}`."""
    expect: str
    """The principal verified, or `!code` for the failure."""
    signer: str = "ed25519"
    signed_in: str = "git"
    verify_in: str = "git"
    tamper: bool = False
    principal: str | None = None


CASES = [
    pytest.param(Case("ed25519@example.com {ed25519}\n", "ed25519@example.com"), id="good"),
    *(
        pytest.param(
            Case(f"x@example.com {{{k}}}\n", "!bad-signature", signer=k, tamper=True), id=f"tampered-{k}"
        )
        for k in ("ed25519", "ecdsa", "rsa")
    ),
    *(
        pytest.param(
            Case(f"x@example.com {{{k}}}\n", "!bad-signature", signer=k, signed_in="file"),
            id=f"other-namespace-{k}",
        )
        for k in ("ed25519", "ecdsa", "rsa")
    ),
    pytest.param(
        Case(
            'x@example.com namespaces="git,file" {ed25519}\n',
            "!bad-signature",
            signed_in="file",
            verify_in="git",
        ),
        id="signed-for-file-verified-for-git",
    ),
    pytest.param(
        Case("x@example.com {ecdsa}\ny@example.com {rsa}\n", "!unknown-key", signer="mallory"),
        id="key-not-listed",
    ),
    pytest.param(Case("# nobody\n\n", "!unknown-key"), id="only-comments"),
    pytest.param(Case("*@example.com {ed25519}\n", "*@example.com"), id="wildcard-as-written"),
    pytest.param(
        Case("*@example.com {ed25519}\n", "alice@example.com", principal="alice@example.com"),
        id="wildcard-admits",
    ),
    pytest.param(
        Case("a?ice@example.com {ed25519}\n", "alice@example.com", principal="alice@example.com"),
        id="question-mark-admits",
    ),
    pytest.param(
        Case("*@example.org {ed25519}\n", "!unknown-key", principal="alice@example.com"),
        id="wildcard-does-not-admit",
    ),
    pytest.param(
        Case("*@example.com,!alice@example.com {ed25519}\n", "!unknown-key", principal="alice@example.com"),
        id="negated-principal",
    ),
    pytest.param(
        Case("*@example.com,!alice@example.com {ed25519}\n", "bob@example.com", principal="bob@example.com"),
        id="negation-spares-others",
    ),
    pytest.param(
        Case("!eve@example.com,alice@example.com {ed25519}\n", "alice@example.com"),
        id="negated-first-is-skipped",
    ),
    pytest.param(
        Case('"alice@example.com,al@example.com" {ed25519}\n', "alice@example.com"), id="quoted-principals"
    ),
    pytest.param(
        Case(
            "x@example.com {rsa}\nalice@example.com {ed25519}\nbob@example.com {ed25519}\n",
            "alice@example.com",
        ),
        id="first-line-in-file-order",
    ),
    pytest.param(
        Case('alice@example.com namespaces="file" {ed25519}\n', "!unknown-key"), id="namespaces-excludes"
    ),
    pytest.param(
        Case('alice@example.com namespaces="file,g?t" {ed25519}\n', "alice@example.com"),
        id="namespaces-pattern",
    ),
    pytest.param(
        Case('alice@example.com namespaces="*,!git" {ed25519}\n', "!unknown-key"), id="namespaces-negated"
    ),
    pytest.param(
        Case('alice@example.com NAMESPACES="git" {ed25519}\n', "alice@example.com"),
        id="option-names-any-case",
    ),
    pytest.param(
        Case(
            'old@example.com namespaces="file" {ed25519}\nnew@example.com namespaces="git" {ed25519}\n',
            "new@example.com",
        ),
        id="first-line-allowing-the-namespace",
    ),
    pytest.param(
        Case('alice@example.com valid-before="20200101" {ed25519}\n', "!unknown-key"),
        id="valid-before-in-the-past",
    ),
    pytest.param(
        Case('alice@example.com valid-after="20400101000000Z" {ed25519}\n', "!unknown-key"),
        id="valid-after-in-the-future",
    ),
    pytest.param(
        Case(
            'alice@example.com valid-after="20291231Z",valid-before="203001020000Z" {ed25519}\n',
            "alice@example.com",
        ),
        id="valid-window",
    ),
    pytest.param(
        Case(
            'old@example.com valid-before="20200101Z" {ed25519}\nnew@example.com {ed25519}\n',
            "new@example.com",
        ),
        id="expired-line-then-current-line",
    ),
    pytest.param(
        Case("alice@example.com cert-authority {ed25519}\n", "!unknown-key"),
        id="cert-authority-never-matches-a-key",
    ),
    pytest.param(
        Case("  alice@example.com   {ed25519}   a comment\r\n", "alice@example.com"), id="blanks-comment-crlf"
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_verdicts_agree_with_ssh_keygen(keys: Keys, tmp_path: Path, case: Case) -> None:
    text = lines(keys, case.allowed)
    signature = sign(keys[case.signer], MESSAGE, case.signed_in)
    message = MESSAGE + b"tampered" if case.tamper else MESSAGE
    signers = AllowedSigners.parse(text.encode(), "allowed")
    assert signers.problems == ()

    try:
        verified = signers.verify(
            message, signature, namespace=case.verify_in, principal=case.principal, at=AT
        )
        got = verified.principal
        assert verified.fingerprint == keys[case.signer].fingerprint
    except SshSignatureError as exc:
        got = "!" + exc.code

    assert got == case.expect
    claimed = case.principal or (case.expect if not case.expect.startswith("!") else "alice@example.com")
    keygen = keygen_verify(allowed_file(tmp_path, text), signature, claimed, message, case.verify_in)
    assert keygen == (None if case.expect.startswith("!") else keys[case.signer].fingerprint)


def test_failure_messages_say_why(keys: Keys) -> None:
    ed = keys["ed25519"]
    text = lines(
        keys,
        'alice@example.com namespaces="file" {ed25519}\nbob@example.com valid-before="20200101Z" {ed25519}\n',
    )
    signers = AllowedSigners.parse(text.encode(), "trust/allowed_signers")
    failures = []
    for message, signature, kwargs in (
        (MESSAGE, sign(ed), {}),
        (MESSAGE, sign(ed), {"namespace": "file", "principal": "carol@example.com"}),
        (MESSAGE, sign(keys["mallory"]), {}),
        (MESSAGE + b"!", sign(ed, MESSAGE, "file"), {"namespace": "file"}),
        (MESSAGE, sign(ed, MESSAGE, "git"), {"namespace": "file"}),
    ):
        with pytest.raises(SshSignatureError) as caught:
            signers.verify(message, signature, at=AT, **kwargs)  # type: ignore[arg-type]
        failures.append((caught.value.code, str(caught.value)))
    assert failures == [
        (
            "unknown-key",
            f"trust/allowed_signers lists the ssh-ed25519 key {ed.fingerprint}, but line 1 does not allow "
            'namespace "git"; line 2 is not valid at 2030-01-01T00:00:00+00:00',
        ),
        (
            "unknown-key",
            f"trust/allowed_signers lists the ssh-ed25519 key {ed.fingerprint}, but line 1 does not admit "
            "principal carol@example.com; line 2 does not admit principal carol@example.com",
        ),
        (
            "unknown-key",
            f"trust/allowed_signers does not list the ssh-ed25519 key {keys['mallory'].fingerprint}",
        ),
        ("bad-signature", f"the ssh-ed25519 signature by {ed.fingerprint} does not verify over these bytes"),
        ("bad-signature", 'the signature was made for namespace "git", not "file"'),
    ]


def test_validity_is_not_checked_without_a_time(keys: Keys) -> None:
    text = lines(keys, 'alice@example.com valid-before="20200101Z" {ed25519}\n')
    signers = AllowedSigners.parse(text.encode(), "allowed")
    assert signers.verify(MESSAGE, sign(keys["ed25519"])).principal == "alice@example.com"
    with pytest.raises(SshSignatureError, match="not valid at"):
        signers.verify(MESSAGE, sign(keys["ed25519"]), at=AT)


def test_find_principals_prints_what_ssh_keygen_prints(keys: Keys, tmp_path: Path) -> None:
    text = lines(
        keys,
        'old@example.com valid-before="20200101Z" {ed25519}\n'
        '"alice@example.com,!eve@example.com,*@example.org" namespaces="file" {ed25519}\n'
        "bob@example.com {ed25519}\n",
    )
    signature = sign(keys["ed25519"])
    signers = AllowedSigners.parse(text.encode(), "allowed")
    assert signers.find_principals(signature, at=AT) == (
        "alice@example.com",
        "!eve@example.com",
        "*@example.org",
    )
    assert list(signers.find_principals(signature, at=AT)) == keygen_find(
        allowed_file(tmp_path, text), signature
    )
    assert signers.find_principals(sign(keys["mallory"]), at=AT) == ()


# --- crafted signatures: other hash and signature algorithms, security keys ---------------------------


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _mpint(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b""
    return _string(raw)


def armor(blob: bytes) -> bytes:
    encoded = base64.b64encode(blob).decode()
    body = "\n".join(encoded[i : i + 70] for i in range(0, len(encoded), 70))
    return f"-----BEGIN SSH SIGNATURE-----\n{body}\n-----END SSH SIGNATURE-----\n".encode()


def sshsig(
    public_blob: bytes,
    make: Callable[[bytes], bytes],
    *,
    namespace: str = "git",
    hash_algorithm: str = "sha512",
    message: bytes = MESSAGE,
    version: int = 1,
) -> bytes:
    """An SSHSIG blob (PROTOCOL.sshsig) whose signature `make` computes over the signed data."""
    digest = hashlib.new(
        hash_algorithm if hash_algorithm in ("sha256", "sha512") else "sha512", message
    ).digest()
    signed = (
        b"SSHSIG"
        + _string(namespace.encode())
        + _string(b"")
        + _string(hash_algorithm.encode())
        + _string(digest)
    )
    return (
        b"SSHSIG"
        + version.to_bytes(4, "big")
        + _string(public_blob)
        + _string(namespace.encode())
        + _string(b"")
        + _string(hash_algorithm.encode())
        + _string(make(signed))
    )


def _private(key: Key) -> object:
    return serialization.load_ssh_private_key(key.path.read_bytes(), None)


def _blob(key: Key) -> bytes:
    return base64.b64decode(key.public.split()[1])


def crafted(keys: Keys, kind: str) -> tuple[str, bytes]:
    """(allowed-signers key, armored signature) of kinds ssh-keygen -Y sign does not make by default."""
    ed, rsa_key = keys["ed25519"], keys["rsa"]
    if kind == "ed25519-sha256":
        return ed.public, armor(sshsig(_blob(ed), _ed25519_signer(ed), hash_algorithm="sha256"))
    if kind in ("rsa-sha2-256", "ssh-rsa"):
        private_rsa = _private(rsa_key)
        assert isinstance(private_rsa, rsa.RSAPrivateKey)
        digest = hashes.SHA256() if kind == "rsa-sha2-256" else hashes.SHA1()

        def rsa_make(data: bytes) -> bytes:
            return _string(kind.encode()) + _string(private_rsa.sign(data, padding.PKCS1v15(), digest))

        return rsa_key.public, armor(sshsig(_blob(rsa_key), rsa_make))
    # FIDO security keys (PROTOCOL.u2f): the key signs H(application) || flags || counter || H(data)
    application = b"ssh:"

    def u2f(data: bytes) -> bytes:
        return (
            hashlib.sha256(application).digest()
            + b"\x01"
            + (7).to_bytes(4, "big")
            + hashlib.sha256(data).digest()
        )

    make: Callable[[bytes], bytes]
    if kind == "sk-ed25519":
        sk = ed25519.Ed25519PrivateKey.generate()
        raw = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        blob = _string(b"sk-ssh-ed25519@openssh.com") + _string(raw) + _string(application)

        def make(data: bytes) -> bytes:
            signed = sk.sign(u2f(data))
            return _string(b"sk-ssh-ed25519@openssh.com") + _string(signed) + b"\x01" + (7).to_bytes(4, "big")
    else:
        sk_ec = ec.generate_private_key(ec.SECP256R1())
        point = sk_ec.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        blob = (
            _string(b"sk-ecdsa-sha2-nistp256@openssh.com")
            + _string(b"nistp256")
            + _string(point)
            + _string(application)
        )

        def make(data: bytes) -> bytes:  # type: ignore[misc]
            r, s = decode_dss_signature(sk_ec.sign(u2f(data), ec.ECDSA(hashes.SHA256())))
            inner = _mpint(r) + _mpint(s)
            return (
                _string(b"sk-ecdsa-sha2-nistp256@openssh.com")
                + _string(inner)
                + b"\x01"
                + (7).to_bytes(4, "big")
            )

    key_type = _string_head(blob)
    return f"{key_type} {base64.b64encode(blob).decode()}", armor(sshsig(blob, make))


def dearmor(armored: bytes) -> bytes:
    return base64.b64decode(b"".join(armored.strip().split(b"\n")[1:-1]))


def _string_head(blob: bytes) -> str:
    return blob[4 : 4 + int.from_bytes(blob[:4], "big")].decode()


@pytest.mark.parametrize(
    ("kind", "accepted"),
    [
        pytest.param("ed25519-sha256", True, id="ed25519-sha256"),
        pytest.param("rsa-sha2-256", True, id="rsa-sha2-256"),
        pytest.param("ssh-rsa", False, id="rsa-sha1-refused"),
        pytest.param("sk-ed25519", True, id="sk-ssh-ed25519"),
        pytest.param("sk-ecdsa", True, id="sk-ecdsa-sha2-nistp256"),
    ],
)
def test_crafted_signatures_agree_with_ssh_keygen(
    keys: Keys, tmp_path: Path, kind: str, accepted: bool
) -> None:
    public, signature = crafted(keys, kind)
    text = f"alice@example.com {public}\n"
    signers = AllowedSigners.parse(text.encode(), "allowed")
    assert signers.problems == ()
    expected_fp = fingerprint(base64.b64decode(public.split()[1]))
    path = allowed_file(tmp_path, text)

    if accepted:
        assert signers.verify(MESSAGE, signature, at=AT) == Verified(
            "alice@example.com", expected_fp, public.split()[0], "git", 1
        )
        assert keygen_verify(path, signature, "alice@example.com") == expected_fp
    else:
        with pytest.raises(SshSignatureError) as caught:
            signers.verify(MESSAGE, signature, at=AT)
        assert caught.value.code == "bad-signature"
        assert keygen_verify(path, signature, "alice@example.com") is None
    with pytest.raises(SshSignatureError) as tampered:
        signers.verify(MESSAGE + b"x", signature, at=AT)
    assert tampered.value.code == "bad-signature"
    assert keygen_verify(path, signature, "alice@example.com", MESSAGE + b"x") is None


# --- garbage ----------------------------------------------------------------------------------------


def _ed25519_signer(key: Key) -> Callable[[bytes], bytes]:
    private = _private(key)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    return lambda data: _string(b"ssh-ed25519") + _string(private.sign(data))


def _reblob(keys: Keys, *, namespace: str = "git", hash_algorithm: str = "sha512", version: int = 1) -> bytes:
    make = _ed25519_signer(keys["ed25519"])
    return sshsig(
        _blob(keys["ed25519"]), make, namespace=namespace, hash_algorithm=hash_algorithm, version=version
    )


NOT_SSH = "not an armored SSH signature (no -----BEGIN SSH SIGNATURE-----)"
BAD = "malformed SSH signature: "


def _garbage(keys: Keys, name: str) -> tuple[bytes, str, str]:
    """(signature, code, message) for signatures that cannot even be read."""
    good = sign(keys["ed25519"])
    body = good.split(b"\n")[1:-2]
    blob = base64.b64decode(b"".join(body))
    table = {
        "empty": (b"", "not-ssh", NOT_SSH),
        "pgp": (b"-----BEGIN PGP SIGNATURE-----\n\niQEz\n-----END PGP SIGNATURE-----\n", "not-ssh", NOT_SSH),
        "x509": (b"-----BEGIN SIGNED MESSAGE-----\nMIAG\n", "not-ssh", NOT_SSH),
        "no-footer": (good.split(b"-----END")[0], "malformed", BAD + "no -----END SSH SIGNATURE-----"),
        "header-run-on": (
            good.replace(b"-----\n", b"-----", 1),
            "malformed",
            BAD + "no line break after the header",
        ),
        "not-base64": (
            good.replace(body[0], b"!!!!" + body[0][4:]),
            "malformed",
            BAD + "not base64 (Only base64 data is allowed)",
        ),
        "wrong-magic": (
            armor(b"SSHSIX" + blob[6:]),
            "malformed",
            BAD + "not an SSHSIG blob (no SSHSIG magic)",
        ),
        "version-2": (
            armor(_reblob(keys, version=2)),
            "malformed",
            BAD + "SSHSIG version 2 is not supported (only 1)",
        ),
        "truncated": (armor(blob[:-10]), "malformed", BAD + "truncated"),
        "trailing-data": (armor(blob + b"\0"), "malformed", BAD + "trailing data"),
        "md5": (
            armor(_reblob(keys, hash_algorithm="md5")),
            "malformed",
            BAD + "hash algorithm 'md5' is neither sha256 nor sha512",
        ),
        "empty-namespace": (armor(_reblob(keys, namespace="")), "malformed", BAD + "the namespace is empty"),
    }
    return table[name]


GARBAGE = ["empty", "pgp", "x509", "no-footer", "header-run-on", "not-base64", "wrong-magic", "version-2",
           "truncated", "trailing-data", "md5", "empty-namespace"]  # fmt: skip


@pytest.mark.parametrize("name", GARBAGE, ids=GARBAGE)
def test_garbage_is_not_ssh_or_malformed(keys: Keys, tmp_path: Path, name: str) -> None:
    signature, code, message = _garbage(keys, name)
    text = lines(keys, "alice@example.com {ed25519}\n")
    with pytest.raises(SshSignatureError) as caught:
        AllowedSigners.parse(text.encode(), "allowed").verify(MESSAGE, signature, at=AT)
    assert (caught.value.code, str(caught.value)) == (code, message)
    assert keygen_verify(allowed_file(tmp_path, text), signature, "alice@example.com") is None


# --- allowed-signers problems -----------------------------------------------------------------------

BROKEN = """\
# team keys
alice@example.com {ed25519}

lonely@example.com
nokey@example.com namespaces="git"
bad64@example.com ssh-ed25519 !!!notbase64
quote@example.com namespaces="git {ecdsa}
unknown@example.com frobnicate {ecdsa}
twice@example.com namespaces="git",namespaces="file" {ecdsa}
time@example.com valid-before="2020" {ecdsa}
order@example.com valid-after="20300101Z",valid-before="20200101Z" {ecdsa}
mixed@example.com ssh-rsa {ed25519_base64}
unquoted@example.com namespaces=git {ecdsa}
bob@example.com {rsa}
"""


def test_bad_lines_are_reported_by_number_and_the_others_still_work(keys: Keys, tmp_path: Path) -> None:
    text = BROKEN.format(
        **{n: k.public for n, k in keys.items()}, ed25519_base64=keys["ed25519"].public.split()[1]
    )
    signers = AllowedSigners.parse(text.encode(), "trust/allowed_signers")

    assert signers.problems == tuple(
        Problem("trust/allowed_signers", line, message)
        for line, message in [
            (4, "invalid line: principals but no key"),
            (5, "missing key (expected `principals [options] keytype base64-key`)"),
            (6, "invalid key: not base64"),
            (7, "invalid options: no closing quote"),
            (8, "bad options: unknown key option at 'frobnicate'"),
            (9, 'bad options: multiple "namespaces" clauses'),
            (10, "bad options: invalid \"valid-before\" time '2020' (YYYYMMDD[HHMM[SS]][Z])"),
            (11, 'bad options: "valid-before" time is before "valid-after"'),
            (12, "invalid key: a ssh-ed25519 key written as ssh-rsa"),
            (13, "bad options: missing start quote"),
        ]
    )
    assert [(s.line, s.principals) for s in signers.signers] == [
        (2, ("alice@example.com",)),
        (14, ("bob@example.com",)),
    ]
    assert signers.verify(MESSAGE, sign(keys["ed25519"]), at=AT).principal == "alice@example.com"
    assert signers.verify(MESSAGE, sign(keys["rsa"]), at=AT).principal == "bob@example.com"

    # ssh-keygen skips the same lines: it complains about each while looking for a key nobody lists
    path = allowed_file(tmp_path, text)
    sig = tmp_path / "mallory.sig"
    sig.write_bytes(sign(keys["mallory"]))
    done = _run("ssh-keygen", "-Y", "find-principals", "-f", str(path), "-s", str(sig), KEYGEN_AT)
    complained = {int(n) for n in re.findall(rf"{re.escape(str(path))}:(\d+):", done.stderr)}
    blank = {n for n, line in enumerate(text.split("\n"), start=1) if not line.strip()}
    complained = sorted(complained - blank)  # OpenSSH before 9.3 also says "missing key" for a blank line
    assert complained == [p.line for p in signers.problems]
    assert keygen_verify(path, sign(keys["rsa"]), "bob@example.com") == keys["rsa"].fingerprint


def test_unsupported_key_types_are_problems_not_bad_options(keys: Keys) -> None:
    text = "dsa@example.com ssh-dss AAAAB3NzaC1kc3MAAAA=\ncert@example.com ssh-ed25519-cert-v01@openssh.com AAAA\n"
    signers = AllowedSigners.parse(text.encode(), "allowed")
    assert [(p.line, p.message.split(" (")[0]) for p in signers.problems] == [
        (1, "key type ssh-dss is not supported"),
        (2, "key type ssh-ed25519-cert-v01@openssh.com is not supported"),
    ]


# --- real signed commits, and identity.py on top -----------------------------------------------------


def _signed_commit(root: Path, key: Key, message: str) -> str:
    git(root, "config", "gpg.format", "ssh")
    git(root, "config", "user.signingkey", str(key.path))
    (root / "file.txt").write_text(message)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-S", "-m", message)
    return git(root, "rev-parse", "HEAD")


@pytest.mark.parametrize("name", ["ed25519", "ecdsa", "rsa"])
def test_signed_commits_verify_as_git_verify_commit_says(keys: Keys, tmp_path: Path, name: str) -> None:
    key = keys[name]
    root = make_repo(tmp_path / "repo")
    commit = _signed_commit(root, key, f"signed by {name}")
    info = Repo(root).commit_info(commit)
    assert info.signature is not None and info.signed_payload is not None
    allowed = lines(keys, "mallory@example.com {mallory}\n") + f"{key.identity} {key.public}\n"

    verified = AllowedSigners.parse(allowed.encode(), "allowed").verify(
        info.signed_payload, info.signature, at=AT
    )
    assert verified == Verified(key.identity, key.fingerprint, SSH_TYPE[name], "git", 2)
    path = allowed_file(tmp_path, allowed)
    done = _run(
        "git", "-C", str(root), "-c", f"gpg.ssh.allowedSignersFile={path}", "verify-commit", "-v", commit
    )
    assert f'Good "git" signature for {key.identity} with' in done.stderr
    assert key.fingerprint in done.stderr

    actor = Actor(key.identity, commit=commit, key=key.fingerprint, verified=True, time=info.time)
    assert Verifier(allowed.encode(), at=AT).actor(info) == actor
    assert (
        verify_signed(info.signed_payload, info.signature, allowed.encode(), commit=commit, time=info.time)
        == actor
    )


def test_identity_keeps_its_codes_and_reasons(keys: Keys, tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo")
    commit = _signed_commit(root, keys["ed25519"], "approve")
    info = Repo(root).commit_info(commit)
    assert info.signature is not None and info.signed_payload is not None
    listed = lines(keys, "alice@example.com,al@example.com {ed25519}\n").encode()
    cases = [
        (None, info.signed_payload, listed),
        (b"-----BEGIN PGP SIGNATURE-----\nx\n-----END PGP SIGNATURE-----\n", info.signed_payload, listed),
        (info.signature, info.signed_payload, b"# nobody yet\n\n"),
        (info.signature, info.signed_payload, lines(keys, "x@example.com {rsa}\n").encode()),
        (info.signature, info.signed_payload + b"tampered", listed),
        (armor(dearmor(info.signature)[:-10]), info.signed_payload, listed),
    ]
    got = [
        verify_signed(payload, signature, allowed, commit=commit, time=info.time, at=AT)
        for signature, payload, allowed in cases
    ]

    def unverified(code: str, reason: str) -> Actor:
        return Actor(None, commit=commit, verified=False, reason=reason, code=code, time=info.time)

    assert got == [
        unverified("unsigned", f"commit {commit[:12]} is not signed"),
        unverified("not-ssh", "not an SSH signature (only SSH-signed commits are accepted)"),
        unverified("no-trusted-keys", "no keys in trust/allowed_signers"),
        unverified("unknown-key", "signed with a key that trust/allowed_signers does not list"),
        unverified(
            "bad-signature",
            "the signature does not verify for alice@example.com, al@example.com (tampered commit?)",
        ),
        unverified("bad-signature", "malformed SSH signature: truncated (tampered commit?)"),
    ]
