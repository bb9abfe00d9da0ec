"""Who signed a commit: SSH commit signatures checked against `trust/allowed_signers`.

Identity comes from signatures, never from what a file claims. A commit's signature (as `git commit -S`
with `gpg.format=ssh` writes it) is verified with `ssh-keygen -Y find-principals` and `-Y verify`
(namespace `git`) against the allowed-signers file of the commit being decided. The result is an
`Actor`: verified with its principal and key fingerprint, or unverified with the reason. Runs
ssh-keygen (the edge); caches results per commit and allowed-signers content.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import InvalidInput
from .protocols import Actor
from .repo import CommitInfo

log = logging.getLogger(__name__)

SSH_SIGNATURE = b"-----BEGIN SSH SIGNATURE-----"
_GOOD = re.compile(r'Good "git" signature for (?P<who>.+?) with (?P<kind>\S+) key (?P<fp>SHA256:\S+)')


def _ssh_keygen() -> str:
    path = shutil.which("ssh-keygen")
    if path is None:
        raise InvalidInput("ssh-keygen is not installed (Debian: apt-get install openssh-client)")
    return path


class Verifier:
    """Verifies commits against one allowed-signers file; remembers what it verified."""

    def __init__(self, allowed_signers: bytes | None, source: str = "trust/allowed_signers") -> None:
        self.allowed_signers = allowed_signers or b""
        self.source = source
        self._cache: dict[str, Actor] = {}

    def actor(self, info: CommitInfo) -> Actor:
        """The verified signer of `info`, or an unverified Actor saying why not."""
        if info.id not in self._cache:
            self._cache[info.id] = self._verify(info)
        return self._cache[info.id]

    def _verify(self, info: CommitInfo) -> Actor:
        def unverified(code: str, reason: str) -> Actor:
            return Actor(None, commit=info.id, verified=False, reason=reason, code=code, time=info.time)

        if not info.signature or info.signed_payload is None:
            return unverified("unsigned", f"commit {info.id[:12]} is not signed")
        if not info.signature.lstrip().startswith(SSH_SIGNATURE):
            return unverified("not-ssh", "not an SSH signature (only SSH-signed commits are accepted)")
        if not any(line.strip() and not line.startswith(b"#") for line in self.allowed_signers.splitlines()):
            return unverified("no-trusted-keys", f"no keys in {self.source}")
        with tempfile.TemporaryDirectory(prefix="stella-ssh-") as tmp:
            allowed = Path(tmp) / "allowed_signers"
            allowed.write_bytes(self.allowed_signers)
            signature = Path(tmp) / "commit.sig"
            signature.write_bytes(info.signature)
            found = subprocess.run(
                [_ssh_keygen(), "-Y", "find-principals", "-f", str(allowed), "-s", str(signature)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            principals = [line.strip() for line in found.stdout.splitlines() if line.strip()]
            if found.returncode != 0 or not principals:
                return unverified("unknown-key", f"signed with a key that {self.source} does not list")
            for principal in principals:
                check = subprocess.run(
                    [
                        _ssh_keygen(),
                        "-Y",
                        "verify",
                        "-f",
                        str(allowed),
                        "-I",
                        principal,
                        "-n",
                        "git",
                        "-s",
                        str(signature),
                    ],
                    input=info.signed_payload,
                    capture_output=True,
                    timeout=30,
                )
                text = check.stdout.decode("utf-8", "replace")
                match = _GOOD.search(text)
                if check.returncode == 0 and match:
                    return Actor(principal, commit=info.id, key=match["fp"], verified=True, time=info.time)
            who = ", ".join(principals)
            return unverified("bad-signature", f"the signature does not verify for {who} (tampered commit?)")

    def digest(self) -> str:
        return hashlib.sha256(self.allowed_signers).hexdigest()
