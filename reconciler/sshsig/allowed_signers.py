"""An OpenSSH allowed-signers file as a whole: its usable lines, its problems, and verifying against it.

`AllowedSigners.parse` keeps each line it cannot use as a `Problem` with its line number;
`AllowedSigners.verify` picks the line that admits a signature's key and checks the signature, as
`ssh-keygen -Y verify` does. It must not read files or the clock: bytes and a time are handed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..errors import Problem
from .allowed_line import AllowedSigner, LineError, parse_line
from .keys import SshPublicKey
from .signature import NAMESPACE, SshSignature, SshSignatureError, unsupported_key, why_not


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
                signer = parse_line(raw, number)
            except LineError as exc:
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
            raise SshSignatureError("unknown-key", unsupported_key(sig.key_type))
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
        why = why_not(sig.key, sig, message, namespace)
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
