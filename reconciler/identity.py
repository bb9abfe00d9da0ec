"""Who signed a commit: SSH commit signatures checked against `trust/allowed_signers`.

Identity comes from signatures, never from what a file claims. A commit's signature (as `git commit -S`
with `gpg.format=ssh` writes it) is verified in-process by `sshsig` (namespace `git`) against the
allowed-signers file of the commit being decided, as `ssh-keygen -Y find-principals` and `-Y verify`
would decide it, with no process per signature. The result is an `Actor`: verified with its principal
and key fingerprint, or unverified with the reason (`unsigned`, `not-ssh`, `no-trusted-keys`,
`unknown-key`, `bad-signature`). `Verifier` parses the allowed-signers file once and caches results per
commit; `verify_signed` checks a (payload, signature) pair given as values, so `stella audit verify` can
re-check the identities recorded in a decision's inputs offline.

Runs no process and reads no file. Keys must be valid (`valid-after`/`valid-before`) when the commit was
signed, its committer time, as `git verify-commit` asks ssh-keygen: an approval does not stop counting
when its key expires later. Only a pair given without a time is checked against the clock.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from functools import lru_cache

from .protocols import Actor
from .repo import CommitInfo
from .sshsig import BEGIN, NAMESPACE, AllowedSigners, SshSignature, SshSignatureError

log = logging.getLogger(__name__)

SSH_SIGNATURE = BEGIN
ALLOWED_SIGNERS = "trust/allowed_signers"


@lru_cache(maxsize=16)
def _parsed(allowed_signers: bytes, source: str) -> AllowedSigners:
    """Parse an allowed-signers file once per content (and log its problems once)."""
    signers = AllowedSigners.parse(allowed_signers, source)
    for problem in signers.problems:
        log.warning("%s (line ignored)", problem)
    return signers


def _judge(
    signers: AllowedSigners,
    payload: bytes | None,
    signature: bytes | None,
    *,
    commit: str | None,
    time: datetime | None,
    at: datetime | None,
) -> Actor:
    def unverified(code: str, reason: str) -> Actor:
        return Actor(None, commit=commit, verified=False, reason=reason, code=code, time=time)

    if not signature or payload is None:
        what = f"commit {commit[:12]}" if commit else "the commit"
        return unverified("unsigned", f"{what} is not signed")
    try:
        parsed = SshSignature.parse(signature)
    except SshSignatureError as exc:
        if exc.code == "not-ssh":
            return unverified("not-ssh", "not an SSH signature (only SSH-signed commits are accepted)")
        if not (signers.signers or signers.problems):
            return unverified("no-trusted-keys", f"no keys in {signers.source}")
        return unverified("bad-signature", f"{exc} (tampered commit?)")
    if not (signers.signers or signers.problems):
        return unverified("no-trusted-keys", f"no keys in {signers.source}")
    when = at or datetime.now(UTC)
    try:
        verified = signers.verify(payload, parsed, namespace=NAMESPACE, at=when)
    except SshSignatureError as exc:
        log.debug("commit %s: %s: %s", commit, exc.code, exc)
        if exc.code == "bad-signature":
            who = ", ".join(signers.find_principals(parsed, at=when))
            return unverified("bad-signature", f"the signature does not verify for {who} (tampered commit?)")
        return unverified("unknown-key", f"signed with a key that {signers.source} does not list")
    return Actor(verified.principal, commit=commit, key=verified.fingerprint, verified=True, time=time)


def verify_signed(
    payload: bytes | None,
    signature: bytes | None,
    allowed_signers: bytes,
    *,
    source: str = ALLOWED_SIGNERS,
    commit: str | None = None,
    time: datetime | None = None,
    at: datetime | None = None,
) -> Actor:
    """Who signed `payload` with the armored SSH `signature`, by `allowed_signers` (namespace `git`).

    The same verdict, codes and reasons as `Verifier.actor` for a commit with that signed payload and
    signature; `commit` and `time` are copied into the `Actor`. Keys must be valid at `at` (None: now).
    The parsed allowed-signers file is cached by content, so checking many records costs one parse.
    """
    return _judge(_parsed(allowed_signers, source), payload, signature, commit=commit, time=time, at=at)


class Verifier:
    """Verifies commits against one allowed-signers file; remembers what it verified."""

    def __init__(
        self, allowed_signers: bytes | None, source: str = ALLOWED_SIGNERS, *, at: datetime | None = None
    ) -> None:
        self.allowed_signers = allowed_signers or b""
        self.source = source
        self.at = at
        """When keys must be valid (None: at each commit's committer time, as `git verify-commit` does)."""
        self.signers = _parsed(self.allowed_signers, source)
        self._cache: dict[str, Actor] = {}

    def actor(self, info: CommitInfo) -> Actor:
        """The verified signer of `info`, or an unverified Actor saying why not."""
        if info.id not in self._cache:
            self._cache[info.id] = self._verify(info)
        return self._cache[info.id]

    def _verify(self, info: CommitInfo) -> Actor:
        return _judge(
            self.signers,
            info.signed_payload,
            info.signature,
            commit=info.id,
            time=info.time,
            at=self.at or info.committed,
        )

    def digest(self) -> str:
        return hashlib.sha256(self.allowed_signers).hexdigest()
