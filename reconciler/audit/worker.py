"""What one unit of `verify`'s work carries: the picklable job and task a worker process is handed,
the facts and results it hands back, and the worker's own view of the repository (opened once per
process, reused for each of its tasks).

No checks here (`records` runs them) and no scheduling (`verifier` does it). Never writes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pygit2

from ..sign import TrustedKeys
from ..sshsig import AllowedSigners
from .findings import Finding
from .keyless import _keyless_verifier


@dataclass(frozen=True)
class _Job:
    """What every worker needs, picklable: where the repository is, which commit, which keys."""

    git_dir: str
    head: str
    keys: tuple[tuple[str, bytes], ...]
    keyless: tuple[tuple[str, bytes], ...] = ()
    """The verifier plugins' trust material (from the source branch; keyless: its policy and root)."""
    signers: tuple[tuple[str, bytes], ...] = ()
    """Policy id -> its trust/allowed_signers: identities in inputs are re-verified against them."""
    keyless_groups: tuple[tuple[tuple[str, ...], tuple[tuple[str, bytes], ...]], ...] = ()
    """(policy ids, keyless trust files) for each distinct keyless policy among the stored policies."""


@dataclass(frozen=True)
class _Task:
    kind: str
    names: tuple[str, ...]


class _Fact(NamedTuple):
    """The little a record leaves for the whole-branch checks."""

    hex: str
    environment: str | None
    previous: str | None
    result: str | None
    release_name: str | None
    release_id: str | None
    kind: str | None = None
    """The predicate type (`release_decision`, `policy_ratification`, ...)."""
    policy: str | None = None
    """The policy named (for a ratification: the one it ratifies)."""
    signing: str | None = None
    """The policy whose keys must sign it (a ratification: the previous one; the genesis: its own)."""
    key: str | None = None
    """The hint of the key that verified its bundle (`keyless:<i>` for keyless group i), if one did."""
    previous_policy: str | None = None
    inputs: str | None = None
    """The sha256 of its inputs file."""
    decided: str | None = None
    """Its `decidedAt` (RFC 3339, UTC, `Z`: ordered as text)."""
    promotion: str | None = None
    """The promotion id a decision decides."""
    artifacts: tuple[tuple[str, str], ...] = ()
    """(name, sha256) of each artifact the predicate lists, in its order."""


@dataclass
class _Result:
    findings: list[Finding] = field(default_factory=list)
    facts: list[_Fact] = field(default_factory=list)
    locks: dict[str, str] = field(default_factory=dict)
    """Release name -> the id its lock file holds."""
    stored: list[str] = field(default_factory=list)
    """Every inputs file and artifact checked (`inputs/<hex>.json`, `artifacts/<hex>/<name>`): each must
    be one a record names."""
    records: int = 0
    bundles: int = 0
    files: int = 0
    identities: int = 0


@dataclass
class _Merged(_Result):
    def add(self, result: _Result) -> None:
        self.findings += result.findings
        self.facts += result.facts
        self.locks.update(result.locks)
        self.stored += result.stored
        self.records += result.records
        self.bundles += result.bundles
        self.files += result.files
        self.identities += result.identities


class _State:
    """One worker's view of the repository at the head commit (opened once, reused for its tasks)."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.git = pygit2.Repository(job.git_dir)
        self.tree = self.git[job.head].peel(pygit2.Commit).tree
        self.keys = TrustedKeys.from_files(job.keys)
        self.keyless = _keyless_verifier(job.keyless)
        self.keyless_groups = [(ids, _keyless_verifier(files)) for ids, files in job.keyless_groups]
        self.signers = dict(job.signers)
        self._allowed: dict[str, AllowedSigners] = {}
        self._dirs: dict[str, Any] = {}

    def allowed_signers(self, policy: str) -> AllowedSigners:
        if policy not in self._allowed:
            self._allowed[policy] = AllowedSigners.parse(
                self.signers.get(policy, b""), "trust/allowed_signers"
            )
        return self._allowed[policy]

    def dir(self, name: str) -> Any:
        """The tree of a top-level directory, or None."""
        if name not in self._dirs:
            try:
                obj = self.tree[name]
            except KeyError:
                obj = None
            self._dirs[name] = obj if isinstance(obj, pygit2.Tree) else None
        return self._dirs[name]

    @staticmethod
    def read(directory: Any, name: str) -> bytes | None:
        if directory is None:
            return None
        try:
            obj = directory[name]
        except KeyError:
            return None
        return obj.data if isinstance(obj, pygit2.Blob) else None


_local = threading.local()


def _state(job: _Job) -> _State:
    state: _State | None = getattr(_local, "state", None)
    if state is None or state.job != job:
        state = _State(job)
        _local.state = state
    return state
