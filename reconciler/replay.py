"""`stella replay`: recompute a recorded decision from its inputs and compare.

A record's `inputs/<hex>.json` holds everything its gates saw. Replay loads it and decides from it
through the same seam the reconcile pass uses (`decision.decide_inputs`: the gate context and plan are
built from the inputs, with the repository at the recorded source commit under the recorded policy
supplying offline data such as scan reports), with the installed plugins, and compares the decision and every
gate's status, reason and message with the statement. A gate whose installed version differs from the
recorded one is reported too. Reads Git; writes nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from .decision import decide_inputs
from .discover import Plugins
from .errors import InvalidInput
from .evidence import gate_json, sha256_hex
from .governance import RATIFICATION, PolicyError, PolicyView, stored_policy
from .ledger import DEPLOYMENT_TYPES, Ledger, evidence_path, hex_of
from .manifests import load_settings
from .models import DecisionInputs, RatificationInputs
from .repo import GitTree, Repo
from .resolve import Resolver

M = TypeVar("M", DecisionInputs, RatificationInputs)


@dataclass
class Replayed:
    """One record replayed: identical, or the differences found."""

    evidence: str
    identical: bool
    differences: list[str] = field(default_factory=list)
    recorded: dict[str, Any] = field(default_factory=dict)
    replayed: dict[str, Any] = field(default_factory=dict)


def replay_one(repo: Repo, tree: GitTree, plugins: Plugins, evidence_id: str) -> Replayed:
    hex_id = hex_of(evidence_id)
    path = evidence_path(hex_id)
    raw = Ledger(tree).statement_raw(hex_id)
    if raw is None:
        raise InvalidInput(f"no record {path} on the evidence branch")
    result = Replayed(f"sha256:{hex_id}", identical=False)
    if sha256_hex(raw) != hex_id:
        result.differences.append(f"{path}: its bytes do not hash to its name (run `stella audit verify`)")
    statement = json.loads(raw)
    predicate = statement.get("predicate", {})
    if predicate.get("type") == RATIFICATION:
        return _replay_ratification(tree, result, predicate)
    if predicate.get("type") in DEPLOYMENT_TYPES:
        return _check_deployment(tree, result, predicate)
    recorded_decision = predicate.get("decision", {})
    result.recorded = recorded_decision
    inputs = _inputs(tree, result, predicate, DecisionInputs, "decision inputs")
    try:
        source = repo.tree(inputs.sourceCommit)
    except InvalidInput as exc:
        raise InvalidInput(
            f"{path}: the source commit {inputs.sourceCommit} is not in this repository (fetch the branch)"
        ) from exc
    files: Any = source
    if inputs.policy is not None:
        try:
            files = PolicyView(stored_policy(tree, inputs.policy), source)
        except PolicyError as exc:
            raise InvalidInput(f"{path}: the policy it was made under is unreadable: {exc}") from exc
    settings = load_settings(files)
    with Resolver(settings, plugins, files, offline=plugins.offline) as registries:
        decision, differences = decide_inputs(
            inputs,
            files,
            plugins,
            mirror=settings.mirror,
            offline=plugins.offline,
            extra={"registries": registries.registry},
        )
    result.differences += differences
    gates: list[dict[str, Any]] = json.loads(json.dumps([gate_json(g) for g in decision.gates]))
    result.replayed = {"result": decision.result, "gates": gates, "reasons": decision.reasons}
    if decision.result != recorded_decision.get("result"):
        result.differences.append(
            f"decision: recorded {recorded_decision.get('result')}, replayed {decision.result}"
        )
    recorded_gates = {g.get("gate"): g for g in recorded_decision.get("gates", [])}
    replayed_gates = {g["gate"]: g for g in gates}
    for name in sorted(set(recorded_gates) | set(replayed_gates)):
        before, now = recorded_gates.get(name), replayed_gates.get(name)
        if before is None or now is None:
            result.differences.append(
                f"gate {name}: {'only replayed' if before is None else 'only recorded'}"
            )
            continue
        for key in ("status", "reason", "message", "retryAt", "facts"):
            if before.get(key) != now.get(key):
                result.differences.append(
                    f"gate {name} {key}: recorded {before.get(key)!r}, replayed {now.get(key)!r}"
                )
    result.identical = not result.differences
    return result


def _inputs(tree: GitTree, result: Replayed, predicate: dict[str, Any], model: type[M], what: str) -> M:
    """The record's inputs file, parsed; a file that does not hash to its name is a difference."""
    inputs_hex = (predicate.get("inputs") or {}).get("sha256", "")
    inputs_raw = Ledger(tree).inputs(inputs_hex)
    if inputs_raw is None:
        raise InvalidInput(f"{result.evidence}: its inputs file inputs/{inputs_hex}.json is missing")
    if sha256_hex(inputs_raw) != inputs_hex:
        result.differences.append(f"inputs/{inputs_hex}.json: its bytes do not hash to its name")
    try:
        return model.model_validate_json(inputs_raw)
    except ValidationError as exc:
        raise InvalidInput(f"inputs/{inputs_hex}.json: not {what}: {exc}") from exc


def _replay_ratification(tree: GitTree, result: Replayed, predicate: dict[str, Any]) -> Replayed:
    """A ratification is re-judged from its inputs: a genesis needs none; a change needs as many
    counted approvals, and no counted reject, as the governance it was judged by required."""
    inputs = _inputs(tree, result, predicate, RatificationInputs, "ratification inputs")
    counted = [v for v in inputs.approvals if v.counted]
    approvers = sorted(v.identity for v in counted if v.decision == "approve")
    rejected = [v.identity for v in counted if v.decision == "reject"]
    if inputs.previous is None:
        outcome = "genesis"
    elif inputs.governance is None or rejected or len(approvers) < inputs.governance.required:
        outcome = "not ratified"
    else:
        outcome = "approved"
    result.recorded = {"result": predicate.get("reason"), "policy": (predicate.get("policy") or {}).get("id")}
    result.replayed = {"result": outcome, "policy": inputs.policy, "approvers": approvers}
    if outcome != predicate.get("reason"):
        result.differences.append(f"ratification: recorded {predicate.get('reason')}, replayed {outcome}")
    if inputs.policy != result.recorded["policy"]:
        result.differences.append(f"policy: recorded {result.recorded['policy']}, inputs say {inputs.policy}")
    result.identical = not result.differences
    return result


def _check_deployment(tree: GitTree, result: Replayed, predicate: dict[str, Any]) -> Replayed:
    """A deployment record is checked, not re-run (it happened on a host): the decision it carried out
    is an allow of its environment for the same release, and the lock it applied is that decision's."""
    decision_id = predicate.get("decision")
    result.recorded = {"result": predicate.get("result"), "decision": decision_id}
    result.replayed = {"result": predicate.get("result"), "decision": decision_id}
    decision = None
    if isinstance(decision_id, str):
        with contextlib.suppress(InvalidInput):
            decision = Ledger(tree).statement(hex_of(decision_id))
    if decision is None:
        result.differences.append(f"deployment: the decision it names ({decision_id}) is not on the branch")
    else:
        made = decision.predicate
        if (made.get("decision") or {}).get("result") != "allow":
            result.differences.append(f"deployment: {decision_id} is not an allow decision")
        environment = predicate.get("environment")
        if made.get("environment") != environment:
            result.differences.append(
                f"deployment: {decision_id} decided {made.get('environment')}, not {environment}"
            )
        if (made.get("release") or {}).get("id") != (predicate.get("release") or {}).get("id"):
            result.differences.append(f"deployment: the release is not the one {decision_id} allowed")
        if made.get("artifacts") != predicate.get("artifacts"):
            result.differences.append(
                f"deployment: the lock it applied is not the one {decision_id} rendered"
            )
    result.identical = not result.differences
    return result


def _locks(predicate: dict[str, Any]) -> list[str]:
    listed = predicate.get("artifacts")
    return sorted(
        str(a.get("sha256")) for a in (listed if isinstance(listed, list) else []) if isinstance(a, dict)
    )


def genesis(repo: Repo, tree: GitTree, head: str) -> str | None:
    """The genesis ratification of the branch (the first added, if there are several)."""
    starts = [
        evidence_path(statement.hex)
        for statement in Ledger(tree).statements(needle=b'"policy_ratification"')
        if statement.type == RATIFICATION and statement.predicate.get("previous") is None
    ]
    first = repo.first_added(head, starts) if len(starts) > 1 else (starts[0] if starts else None)
    return f"sha256:{first.removeprefix('evidence/').removesuffix('.json')}" if first else None


def records(tree: GitTree) -> Iterator[str]:
    """Every evidence id on the branch, sorted."""
    for hex_id in Ledger(tree).statement_ids():
        yield f"sha256:{hex_id}"
