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

By concern: `wire` (the SSH wire format), `keys` (key types, loading, fingerprints), `signature`
(armored signatures and verifying one with a key), `allowed_line` (one allowed-signers line) and
`allowed_signers` (the file, and verifying against it). Import from `reconciler.sshsig`.
"""

from .allowed_line import AllowedSigner, match_list
from .allowed_signers import AllowedSigners, Verified
from .keys import KEY_TYPES, SK_ECDSA, SK_ED25519, SshPublicKey, fingerprint
from .signature import (
    BEGIN,
    END,
    NAMESPACE,
    FailureCode,
    HashAlgorithm,
    SshSignature,
    SshSignatureError,
)

__all__ = [
    "BEGIN",
    "END",
    "KEY_TYPES",
    "NAMESPACE",
    "SK_ECDSA",
    "SK_ED25519",
    "AllowedSigner",
    "AllowedSigners",
    "FailureCode",
    "HashAlgorithm",
    "SshPublicKey",
    "SshSignature",
    "SshSignatureError",
    "Verified",
    "fingerprint",
    "match_list",
]
