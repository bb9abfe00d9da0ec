"""What `stella audit verify` reports: the stable check codes, a `Finding`, and the `Report`.

Plain values: no Git, no disk, no checks (those are in the modules that find things). Never prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CHECKS = (
    "hash",
    "signature",
    "statement",
    "inputs",
    "artifact",
    "lock",
    "chain",
    "pointer",
    "history",
    "reflog",
    "layout",
    "checkpoint",
    "packet",
    "policy",
    "identity",
    "key",
    "duplicate",
    "unreferenced",
)
"""Every `Finding.check` code, stable across versions (documented in docs/audit.md)."""


@dataclass(frozen=True)
class Finding:
    file: str
    message: str
    commit: str | None = None
    check: str = "layout"

    def __str__(self) -> str:
        where = f"{self.file} (commit {self.commit[:12]})" if self.commit else self.file
        return f"{where}: {self.message}"

    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.file, self.message, self.commit or "", self.check)

    def as_dict(self) -> dict[str, str | None]:
        return {"file": self.file, "message": self.message, "commit": self.commit, "check": self.check}


@dataclass
class Report:
    head: str | None
    ref: str = ""
    records: int = 0
    bundles: int = 0
    commits: int = 0
    files: int = 0
    witnesses: int = 0
    """Keyless witnesses seen (`evidence/<hex>.keyless.sigstore.json`); the sigstore plugin checks them."""
    chains: dict[str, str] = field(default_factory=dict)
    """Environment -> the evidence id at the head of its chain (only for chains that do not fork)."""
    keys: dict[str, str] = field(default_factory=dict)
    """Trusted key source -> key hint: what the signatures were checked against."""
    genesis: str | None = None
    """The genesis ratification the policy chain starts from (pinned with `--root`, else trusted on
    first use)."""
    root_pinned: bool = False
    policy: str | None = None
    """The policy ratified at the head of the chain."""
    policies: list[str] = field(default_factory=list)
    """Every ratified policy, oldest first."""
    verified_by: dict[str, str] = field(default_factory=dict)
    """Evidence id -> `<policy id>: <key source>` (or `legacy: <key source>`): which key verified it."""
    identities: int = 0
    """Signed commits (requesters, approvers) re-verified from the recorded inputs."""
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings
