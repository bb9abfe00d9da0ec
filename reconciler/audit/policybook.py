"""The policies stored on the evidence branch (`policies/`, `policy-files/`), their keys and signers,
and the `policy` checks: the ratified chain from its genesis, each record held to the keys of the
policy it must be signed under, the policy pointer, and stored policies or files nothing ratified.

Works from the facts the workers returned and the tree it is given; never writes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from ..governance import (
    AGENT_KEYS_DIR,
    RATIFICATION,
    Policy,
    PolicyError,
    agent_key_path,
    read_pointer,
    stored_policy,
)
from ..ledger import DEPLOYMENT_TYPES, POINTER, policies_path
from ..repo import GitTree, Repo
from ..sign import TrustedKeys, public_pem
from .findings import Finding, Report
from .keyless import _MemoryFiles, keyless_files
from .layout import _HEX, KEYS_DIR, _path
from .worker import _Fact, _Merged


@dataclass
class _PolicyBook:
    """The policies stored on the branch (`policies/`, `policy-files/`), their keys and signers.

    Workers verify each bundle with the keys of every stored policy (and the legacy keys) and report
    which key did; `check()` then holds each record to the keys of the policy it must be signed under,
    walking the ratified chain from its genesis.
    """

    policies: dict[str, Policy] = field(default_factory=dict)
    hints: dict[str, dict[str, str]] = field(default_factory=dict)
    agent_hints: dict[str, dict[str, str]] = field(default_factory=dict)
    """Policy id -> hint -> `trust/agent-keys/<target>.pub`: what may sign a target's deployment records."""
    """Policy id -> key hint -> the key's file."""
    allowed_signers: dict[str, bytes] = field(default_factory=dict)
    keyless: dict[str, tuple[tuple[str, bytes], ...]] = field(default_factory=dict)
    legacy: TrustedKeys = field(default_factory=TrustedKeys)
    legacy_keyless: tuple[tuple[str, bytes], ...] = ()
    pointer: dict[str, Any] | None = None
    stored: list[str] = field(default_factory=list)
    """The id of every policy stored under `policies/` (whether it reads or not)."""
    listed: set[str] = field(default_factory=set)
    """The sha256 hex of every file a stored policy lists (`policy-files/<hex>`)."""
    files: list[str] = field(default_factory=list)
    """The names under `policy-files/`."""

    @classmethod
    def read(
        cls,
        tree: GitTree,
        legacy: TrustedKeys,
        legacy_keyless: tuple[tuple[str, bytes], ...],
        findings: list[Finding],
    ) -> _PolicyBook:
        book = cls(legacy=legacy, legacy_keyless=legacy_keyless, pointer=read_pointer(tree))
        book.files = tree.listdir("policy-files")
        for name in tree.listdir("policies"):
            hex_id = name.removesuffix(".json")
            if not name.endswith(".json") or not _HEX.fullmatch(hex_id):
                findings.append(Finding(f"policies/{name}", "unexpected file in policies/", check="layout"))
                continue
            book.stored.append(f"sha256:{hex_id}")
            book.listed |= _listed_files(tree.read(f"policies/{name}"))
            try:
                policy = stored_policy(tree, f"sha256:{hex_id}")
            except PolicyError as exc:
                findings.append(Finding(exc.file or f"policies/{name}", str(exc), check="policy"))
                continue
            book.policies[policy.id] = policy
            book.hints[policy.id] = {}
            book.agent_hints[policy.id] = {}
            for path, data in sorted(policy.files.items()):
                if path.startswith(f"{AGENT_KEYS_DIR}/") and path.endswith(".pub"):
                    try:
                        trusted = TrustedKeys.from_files([(path, data)])
                    except InvalidInput as exc:
                        findings.append(Finding(f"policies/{name}", f"{path}: {exc}", check="policy"))
                        continue
                    book.agent_hints[policy.id].update({hint: path for hint in trusted})
                if path.startswith(f"{KEYS_DIR}/") and path.endswith(".pub"):
                    try:
                        trusted = TrustedKeys.from_files([(path, data)])
                    except InvalidInput as exc:
                        findings.append(Finding(f"policies/{name}", f"{path}: {exc}", check="policy"))
                        continue
                    book.hints[policy.id].update({hint: path for hint in trusted})
            signers = policy.files.get("trust/allowed_signers")
            if signers is not None:
                book.allowed_signers[policy.id] = signers
            keyless = keyless_files(_MemoryFiles(sorted(policy.files.items())))
            if keyless:
                book.keyless[policy.id] = keyless
        return book

    def key_pems(self) -> tuple[tuple[str, bytes], ...]:
        """Every key a bundle may be verified with (legacy keys first), as (source, PEM)."""
        out = [(k.source, public_pem(k.public_key)) for k in self.legacy.values()]
        for policy_id, policy in sorted(self.policies.items()):
            for _hint, path in sorted({**self.hints[policy_id], **self.agent_hints[policy_id]}.items()):
                out.append((f"{policy_id}:{path}", policy.files[path]))
        return tuple(out)

    def keyless_groups(self) -> tuple[tuple[tuple[str, ...], tuple[tuple[str, bytes], ...]], ...]:
        groups: dict[tuple[tuple[str, bytes], ...], list[str]] = {}
        for policy_id, files in sorted(self.keyless.items()):
            groups.setdefault(files, []).append(policy_id)
        return tuple((tuple(ids), files) for files, ids in groups.items())

    def _holds(self, policy_id: str, key: str | None) -> str | None:
        """The key file of `policy_id` that `key` (a hint or `keyless:<i>`) is, or None."""
        if key is None:
            return None
        if key.startswith("keyless:"):
            index = key.removeprefix("keyless:")
            if index == "legacy" or not index.isdigit():
                return None
            ids, files = self.keyless_groups()[int(index)]
            return files[0][0] if policy_id in ids else None  # the verifier's own configuration file
        return self.hints.get(policy_id, {}).get(key)

    def check(
        self, repo: Repo, head: str, merged: _Merged, report: Report, root: str | None
    ) -> list[Finding]:
        """The policy chain from its genesis, and each record against the keys it must be signed with."""
        found: list[Finding] = []
        facts = {f"sha256:{f.hex}": f for f in merged.facts}
        ratifications = {k: f for k, f in facts.items() if f.kind == RATIFICATION}
        starts = sorted(k for k, f in ratifications.items() if f.previous is None)
        genesis: str | None = None
        if root is not None:
            if root in starts:
                genesis = root
            else:
                found.append(
                    Finding(
                        _path(root) if root.startswith("sha256:") else report.ref,
                        f"the pinned root {root} is not a genesis ratification on this branch",
                        check="policy",
                    )
                )
        elif len(starts) > 1:
            first = repo.first_added(head, [_path(k) for k in starts])
            genesis = next((k for k in starts if _path(k) == first), starts[0])
        elif starts:
            genesis = starts[0]
        for other in starts:
            if other != genesis:
                pinned = "the pinned root" if root else "the first genesis"
                found.append(
                    Finding(_path(other), f"a second genesis: the chain starts at {pinned}", check="policy")
                )
        report.genesis = genesis
        ratified: list[str] = []
        current = genesis
        on_chain: set[str] = set()
        while current is not None and current not in on_chain:
            on_chain.add(current)
            fact = ratifications[current]
            expected = fact.policy if fact.previous is None else (ratified[-1] if ratified else None)
            if fact.previous is not None and fact.previous_policy != expected:
                found.append(
                    Finding(
                        _path(current),
                        f"names previous policy {fact.previous_policy}, but the chain ratified {expected}",
                        check="policy",
                    )
                )
            signing = fact.policy if fact.previous is None else fact.previous_policy
            self._check_key(current, fact, signing, found, report)
            if fact.policy is not None:
                ratified.append(fact.policy)
            children = sorted(k for k, f in ratifications.items() if f.previous == current)
            current = children[0] if children else None
        for other in sorted(set(ratifications) - on_chain):
            if other not in starts:
                found.append(Finding(_path(other), "a ratification not on the policy chain", check="policy"))
        report.policies = ratified
        report.policy = ratified[-1] if ratified else None
        valid = set(ratified)
        chain_facts = [ratifications[k] for k in _chain_ids(genesis, ratifications)]
        superseded = {
            before.policy: after.decided
            for before, after in itertools.pairwise(chain_facts)
            if before.policy is not None and after.decided is not None
        }
        for evidence_id, fact in sorted(facts.items()):
            if fact.kind == RATIFICATION or fact.key is None:
                continue
            if fact.policy is None:
                if genesis is None:
                    source = next((k.source for k in self.legacy.values() if k.hint == fact.key), None)
                    if source is None and not fact.key.startswith("keyless:"):
                        found.append(
                            Finding(
                                _path(evidence_id), _not_in("the legacy keys", fact.key), check="signature"
                            )
                        )
                    else:
                        report.verified_by[evidence_id] = f"legacy: {source or fact.key}"
                    continue
                signing = ratifications[genesis].policy
                made, since = fact.decided, ratifications[genesis].decided
                if made is not None and since is not None and made > since:
                    found.append(
                        Finding(
                            _path(evidence_id),
                            f"names no policy, but was made at {made}, after the genesis ({since})",
                            check="policy",
                        )
                    )
            else:
                signing = fact.policy
                if signing not in valid:
                    found.append(
                        Finding(
                            _path(evidence_id),
                            f"made under policy {signing}, which was never ratified",
                            check="policy",
                        )
                    )
                    continue
                until = superseded.get(signing)
                if until is not None and fact.decided is not None and fact.decided > until:
                    found.append(
                        Finding(
                            _path(evidence_id),
                            f"made under policy {signing} at {fact.decided}, after a later policy was "
                            f"ratified ({until}): that policy's keys sign nothing new",
                            check="policy",
                        )
                    )
            self._check_key(evidence_id, fact, signing, found, report)
        found += self._check_pointer(report, ratifications)
        found += self._check_unreferenced(valid)
        return found

    def _check_unreferenced(self, ratified: set[str]) -> list[Finding]:
        """Every stored policy was ratified on the chain, every policy file is listed by a stored one."""
        found = [
            Finding(
                policies_path(policy_id.removeprefix("sha256:")),
                f"policy {policy_id} was never ratified on the policy chain",
                check="unreferenced",
            )
            for policy_id in self.stored
            if policy_id not in ratified
        ]
        found += [
            Finding(f"policy-files/{name}", "no stored policy lists this file", check="unreferenced")
            for name in self.files
            if _HEX.fullmatch(name) and name not in self.listed
        ]
        return found

    def _check_key(
        self, evidence_id: str, fact: _Fact, signing: str | None, found: list[Finding], report: Report
    ) -> None:
        if fact.key is None:
            return  # the bundle did not verify at all: already a finding
        if fact.kind in DEPLOYMENT_TYPES:
            self._check_agent_key(evidence_id, fact, signing, found, report)
            return
        held = self._holds(signing, fact.key) if signing else None
        if held is None:
            where = f"policy {signing}" if signing else "no policy"
            found.append(Finding(_path(evidence_id), _not_in(where, fact.key), check="signature"))
            return
        report.verified_by[evidence_id] = f"{signing}: {held}"

    def _check_agent_key(
        self, evidence_id: str, fact: _Fact, signing: str | None, found: list[Finding], report: Report
    ) -> None:
        """A deployment record is signed by the agent key of its own target, of the policy it names."""
        target = (fact.environment or "").rpartition("/")[2]
        expected = agent_key_path(target)
        held = self.agent_hints.get(signing or "", {}).get(fact.key or "")
        if signing is None or held != expected:
            where = f"policy {signing}" if signing else "no policy"
            message = f"signed by a key (hint {fact.key}) that {where} does not hold as {expected}"
            found.append(Finding(_path(evidence_id), message, check="signature"))
            return
        report.verified_by[evidence_id] = f"{signing}: {held}"

    def _check_pointer(self, report: Report, ratifications: Mapping[str, _Fact]) -> list[Finding]:
        head = next(
            (
                k
                for k in ratifications
                if k in report.verified_by and not any(f.previous == k for f in ratifications.values())
            ),
            None,
        )
        if not ratifications:
            if self.pointer is not None:
                return [
                    Finding(POINTER, "a policy pointer, but no ratification on the branch", check="pointer")
                ]
            return []
        expected = {"id": report.policy, "record": head}
        if self.pointer != expected:
            return [
                Finding(
                    POINTER,
                    f"says {self.pointer}, not the head of the policy chain ({report.policy}, {head})",
                    check="pointer",
                )
            ]
        return []


def _listed_files(raw: bytes | None) -> set[str]:
    """The sha256 hex of each file a `policies/<hex>.json` lists, as far as it reads."""
    try:
        manifest = json.loads(raw or b"")
    except ValueError:
        return set()
    if not isinstance(manifest, dict):
        return set()
    return {v.removeprefix("sha256:") for v in manifest.values() if isinstance(v, str)}


def _chain_ids(genesis: str | None, ratifications: Mapping[str, _Fact]) -> list[str]:
    """The ratification ids from the genesis along `previous` links (the first child at a fork)."""
    out: list[str] = []
    current = genesis
    while current is not None and current not in out:
        out.append(current)
        children = sorted(k for k, f in ratifications.items() if f.previous == current)
        current = children[0] if children else None
    return out


def _not_in(where: str, key: str) -> str:
    return f"signed by a key (hint {key}) that {where} does not hold as an evidence key"
