"""The whole-branch checks over the facts the workers returned: release locks (`lock`), each
environment's chain and pointer (`chain`, `pointer`), one decision per promotion (`duplicate`), and
inputs files and artifacts no record names (`unreferenced`).

Reads only the pointers of the tree it is given; never writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..governance import POLICY_CHAIN
from ..ledger import TARGET_CHAIN, TARGETS, target_chain, target_pointer_path
from ..repo import GitTree
from .findings import Finding, Report
from .layout import _path
from .worker import _Fact, _Merged


def _check_locks(merged: _Merged) -> list[Finding]:
    found: list[Finding] = []
    for fact in merged.facts:
        if fact.release_name is None:
            continue
        lock_id = merged.locks.get(fact.release_name)
        path = f"evidence/{fact.hex}.json"
        if fact.release_name not in merged.locks:
            found.append(
                Finding(path, f"its release lock releases/{fact.release_name}.json is missing", check="lock")
            )
        elif lock_id != fact.release_id:
            found.append(
                Finding(path, f"release id differs from releases/{fact.release_name}.json", check="lock")
            )
    return found


def _check_chains(tree: GitTree, merged: _Merged, report: Report) -> list[Finding]:
    """Chain links, forks, and each environment's heads and pointer; sets `report.chains`."""
    found: list[Finding] = []
    facts = {f"sha256:{f.hex}": f for f in merged.facts if f.environment is not None}
    children: dict[str, list[str]] = {}
    for evidence_id, fact in sorted(facts.items()):
        previous = fact.previous
        if previous is None:
            continue
        other = facts.get(previous)
        if other is None:
            message = f"chain link points to {previous}, which is not a record here"
            found.append(Finding(_path(evidence_id), message, None, "chain"))
        elif other.environment != fact.environment:
            message = f"chain link points to {previous} of another environment"
            found.append(Finding(_path(evidence_id), message, None, "chain"))
        children.setdefault(previous, []).append(evidence_id)
    for previous, kids in sorted(children.items()):
        if len(kids) > 1:
            message = f"chain forks: {len(kids)} records name it as previous"
            found.append(Finding(_path(previous), message, None, "chain"))
    heads: dict[str, list[str]] = {}
    for evidence_id, fact in sorted(facts.items()):
        if evidence_id not in children and fact.environment is not None:
            heads.setdefault(fact.environment, []).append(evidence_id)
    report.chains = {env: ids[0] for env, ids in sorted(heads.items()) if len(ids) == 1}
    targets = {chain for chain in heads if chain.startswith(TARGET_CHAIN)}
    for env in sorted((set(heads) - {POLICY_CHAIN} - targets) | set(tree.listdir("environments"))):
        chain_heads = heads.get(env, []) if env != POLICY_CHAIN else []  # the policy chain has no pointer
        found += _check_pointer(tree, env, chain_heads, facts)
    for env in tree.listdir(TARGETS):
        targets |= {target_chain(env, name) for name in tree.listdir(f"{TARGETS}/{env}")}
    for chain in sorted(targets):
        found += _check_target_pointer(tree, chain, heads.get(chain, []), facts)
    return found


def _check_target_pointer(
    tree: GitTree, chain: str, heads: list[str], facts: Mapping[str, _Fact]
) -> list[Finding]:
    """`targets/<env>/<target>/stella.version.json` mirrors the target's sticker: it names the newest
    record of the target's chain that left it running a release (a `succeeded` deployment, or a
    `rolled-back` rollback) as what runs (or nothing, before any)."""
    env, _, target = chain.removeprefix(TARGET_CHAIN).partition("/")
    path = target_pointer_path(env, target)
    raw = tree.read(path)
    if raw is None:
        return [Finding(path, "missing: the target has deployment records but no pointer", check="pointer")]
    try:
        pointer = json.loads(raw)
        if not isinstance(pointer, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return [Finding(path, f"not JSON: {exc}", check="pointer")]
    if not heads:
        return [
            Finding(path, f"a pointer for target {target} of {env}, which has no records", check="pointer")
        ]
    if len(heads) > 1:
        return [Finding(path, f"the target's chain has {len(heads)} heads", check="chain")]
    newest = _newest(facts, heads[0], "succeeded", "rolled-back")
    expected = f"sha256:{newest.hex}" if newest is not None else None
    if pointer.get("deployment") != expected:
        message = (
            f"names deployment {pointer.get('deployment')}, not the newest one that left the target "
            f"running a release ({expected})"
        )
        return [Finding(path, message, check="pointer")]
    return []


def _check_pointer(tree: GitTree, env: str, heads: list[str], facts: Mapping[str, _Fact]) -> list[Finding]:
    """`environments/<env>/stella.version.json` names the one head of the chain and its newest allowed
    record; any other head is a record no later record and no pointer reaches."""
    path = f"environments/{env}/stella.version.json"
    raw = tree.read(path)
    pointer: dict[str, Any] | None = None
    found: list[Finding] = []
    if raw is None:
        if heads:
            found.append(
                Finding(path, "missing: the environment has records but no pointer", check="pointer")
            )
    else:
        try:
            pointer = json.loads(raw)
            if not isinstance(pointer, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            found.append(Finding(path, f"not JSON: {exc}", check="pointer"))
            pointer = None
        if not heads:
            message = f"a pointer for {env}, which has no records: nothing was decided for it"
            return [*found, Finding(path, message, check="pointer")]
    head = pointer.get("head") if pointer is not None else None
    for other in heads:
        if other != head and len(heads) > 1:
            message = f"a second head of {env}'s chain: no record names it as previous"
            found.append(Finding(_path(other), f"{message}, and the pointer names {head}", None, "chain"))
    if pointer is None or not heads:
        return found
    if head not in heads:
        message = f"points to {head}, not the head of the chain ({', '.join(heads)})"
        return [*found, Finding(path, message, check="pointer")]
    if pointer.get("environment") != env:
        return [*found, Finding(path, f"names environment {pointer.get('environment')!r}", check="pointer")]
    if set(pointer) != _POINTER_FIELDS:
        fields = ", ".join(sorted(pointer))
        message = f"has the fields {fields}, not {', '.join(sorted(_POINTER_FIELDS))}"
        found.append(Finding(path, message, check="pointer"))
    current = pointer.get("current")
    named = current.get("evidence") if isinstance(current, dict) else None
    allowed = _newest_allowed(facts, head)
    expected = f"sha256:{allowed.hex}" if allowed is not None else None
    if expected != named:
        message = f"current names {named}, not the newest allowed record of the chain ({expected or 'none'})"
        found.append(Finding(path, message, check="pointer"))
    elif allowed is None:
        if current is not None:
            found.append(
                Finding(path, "current is set, but the chain has no allowed record", check="pointer")
            )
    elif current != (want := _current_of(allowed)):
        have = current if isinstance(current, dict) else {}
        differ = [
            f"{key} {have.get(key)!r} is not the record's {want.get(key)!r}"
            if key in want
            else f"{key} is not a field of current"
            for key in sorted(set(want) | set(have))
            if have.get(key) != want.get(key) or key not in want
        ]
        message = f"current differs from the record it names ({named}): {'; '.join(differ)}"
        found.append(Finding(path, message, check="pointer"))
    return found


_POINTER_FIELDS = frozenset({"environment", "head", "current"})


def _current_of(fact: _Fact) -> dict[str, Any]:
    """What a pointer's `current` must be for an allowed record (as the reconciler writes it)."""
    return {
        "release": fact.release_name,
        "releaseId": fact.release_id,
        "evidence": f"sha256:{fact.hex}",
        "decidedAt": fact.decided,
        "artifacts": dict(fact.artifacts),
    }


def _newest_allowed(facts: Mapping[str, _Fact], head: object) -> _Fact | None:
    return _newest(facts, head, "allow")


def _newest(facts: Mapping[str, _Fact], head: object, *results: str) -> _Fact | None:
    """The newest record of the chain ending at `head` whose result is one of `results`."""
    seen: set[str] = set()
    current = head if isinstance(head, str) else None
    while current is not None and current not in seen and current in facts:
        seen.add(current)
        fact = facts[current]
        if fact.result in results:
            return fact
        current = fact.previous
    return None


def _check_duplicates(merged: _Merged, report: Report) -> list[Finding]:
    """One decision per promotion id: a recorded decision is final (DESIGN §4). Only records that
    verify count (a record that does not is ignored by the reconciler, which decides again); the first
    is the earliest in its chain (by `decidedAt` across environments), each later one is a finding."""
    by_promotion: dict[str, list[_Fact]] = {}
    for fact in merged.facts:
        if fact.kind == "release_decision" and fact.promotion and f"sha256:{fact.hex}" in report.verified_by:
            by_promotion.setdefault(fact.promotion, []).append(fact)
    doubled = {k: v for k, v in by_promotion.items() if len(v) > 1}
    if not doubled:
        return []
    facts = {f"sha256:{f.hex}": f for f in merged.facts if f.environment is not None}
    depths: dict[str, int] = {}
    found: list[Finding] = []
    for promotion, decisions in sorted(doubled.items()):
        one_chain = len({f.environment for f in decisions}) == 1
        keyed = []
        for fact in decisions:
            depth = _depth(facts, f"sha256:{fact.hex}", depths)
            keyed.append(((depth if one_chain else 0, fact.decided or "", depth, fact.hex), fact))
        first, *later = [fact for _, fact in sorted(keyed)]
        when = f" at {first.decided}" if first.decided else ""
        for fact in later:
            message = (
                f"a second decision for promotion {promotion}: sha256:{first.hex} decided it first{when}"
            )
            found.append(Finding(_path(fact.hex), message, check="duplicate"))
    return found


def _depth(facts: Mapping[str, _Fact], evidence_id: str, depths: dict[str, int]) -> int:
    """How many records precede `evidence_id` along its `previous` links (memoised in `depths`)."""
    path: list[str] = []
    seen: set[str] = set()
    current: str | None = evidence_id
    while current is not None and current not in depths and current in facts and current not in seen:
        path.append(current)
        seen.add(current)
        current = facts[current].previous
    base = depths.get(current, -1) if current is not None else -1
    for evidence in reversed(path):
        base += 1
        depths[evidence] = base
    return depths.get(evidence_id, 0)


def _check_unreferenced(merged: _Merged) -> list[Finding]:
    """Every inputs file and artifact on the branch is one a record names."""
    named = {f"inputs/{f.inputs}.json" for f in merged.facts if f.inputs is not None}
    named |= {f"artifacts/{sha}/{name}" for f in merged.facts for name, sha in f.artifacts}
    return [
        Finding(
            path,
            "no record names this inputs file"
            if path.startswith("inputs/")
            else "no record lists this artifact",
            check="unreferenced",
        )
        for path in sorted(set(merged.stored) - named)
    ]
