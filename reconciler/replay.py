"""`stella replay`: recompute a recorded decision from its inputs and compare.

A record's `inputs/<hex>.json` holds everything its gates saw. Replay loads it, rebuilds the gate
context (the repository at the recorded source commit supplies offline data such as scan reports),
runs the same gates in the same order with the installed plugins, and compares the decision and every
gate's status, reason and message with the statement. A gate whose installed version differs from the
recorded one is reported too. Reads Git; writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from .discover import Plugins
from .errors import InvalidInput
from .evidence import gate_json, sha256_hex
from .governance import RATIFICATION, PolicyError, PolicyView, stored_policy
from .manifests import load_settings
from .models import DecisionInputs, InputActor, RatificationInputs
from .policy import PlannedGate, decide
from .protocols import Actor, ApprovalRecord, GateContext, PriorDecision
from .repo import GitTree, Repo

M = TypeVar("M", DecisionInputs, RatificationInputs)


@dataclass
class Replayed:
    """One record replayed: identical, or the differences found."""

    evidence: str
    identical: bool
    differences: list[str] = field(default_factory=list)
    recorded: dict[str, Any] = field(default_factory=dict)
    replayed: dict[str, Any] = field(default_factory=dict)


def _actor(value: InputActor) -> Actor:
    return Actor(
        value.identity,
        commit=value.commit,
        key=value.key,
        verified=value.verified,
        reason=value.reason,
        code=value.code,
        time=value.time,
    )


def _normalise(evidence_id: str) -> str:
    hex_id = evidence_id.removeprefix("sha256:")
    if len(hex_id) != 64 or any(c not in "0123456789abcdef" for c in hex_id):
        raise InvalidInput(f"{evidence_id!r} is not an evidence id (sha256:<64 hex>)")
    return hex_id


def replay_one(repo: Repo, tree: GitTree, plugins: Plugins, evidence_id: str) -> Replayed:
    hex_id = _normalise(evidence_id)
    path = f"evidence/{hex_id}.json"
    raw = tree.read(path)
    if raw is None:
        raise InvalidInput(f"no record {path} on the evidence branch")
    result = Replayed(f"sha256:{hex_id}", identical=False)
    if sha256_hex(raw) != hex_id:
        result.differences.append(f"{path}: its bytes do not hash to its name (run `stella audit verify`)")
    statement = json.loads(raw)
    predicate = statement.get("predicate", {})
    if predicate.get("type") == RATIFICATION:
        return _replay_ratification(tree, result, predicate)
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
    plan = []
    for recorded_gate in inputs.gates:
        gate = plugins.gates.get(recorded_gate.name)
        if gate is None:
            plan.append(
                PlannedGate(
                    recorded_gate.name,
                    None,
                    recorded_gate.options,
                    plugins.unavailable("gates", recorded_gate.name),
                )
            )
            continue
        if gate.manifest.version != recorded_gate.version:
            result.differences.append(
                f"gate {recorded_gate.name}: recorded with version {recorded_gate.version}, "
                f"installed version is {gate.manifest.version}"
            )
        plan.append(
            PlannedGate(recorded_gate.name, gate, recorded_gate.options, version=gate.manifest.version)
        )
    ctx = GateContext(
        now=inputs.decidedAt,
        promotion_id=inputs.promotionId,
        promotion=inputs.promotion,
        release=inputs.release,
        environment=inputs.environment,
        options={},
        requester=_actor(inputs.requester),
        history=tuple(
            PriorDecision(p.evidence, p.environment, p.releaseId, p.result, p.decidedAt)
            for p in inputs.history
        ),
        approvals=tuple(
            ApprovalRecord(
                identity=a.identity,
                decision=a.decision,
                release=a.release,
                comment=a.comment,
                signer=_actor(a.signer),
                earlier_signers=tuple(a.earlierSigners),
                environment=a.environment,
                stale=a.stale,
            )
            for a in inputs.approvals
        ),
        groups={name: tuple(members) for name, members in inputs.groups.items()},
        files=files,
        mirror=load_settings(files).mirror,
        offline=plugins.offline,
    )
    decision = decide(ctx, plan)
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
    inputs_raw = tree.read(f"inputs/{inputs_hex}.json")
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


def genesis(repo: Repo, tree: GitTree, head: str) -> str | None:
    """The genesis ratification of the branch (the first added, if there are several)."""
    starts = []
    for evidence_id in records(tree):
        raw = tree.read(f"evidence/{evidence_id.removeprefix('sha256:')}.json") or b""
        if b'"policy_ratification"' not in raw:
            continue
        predicate = json.loads(raw).get("predicate", {})
        if predicate.get("type") == RATIFICATION and predicate.get("previous") is None:
            starts.append(f"evidence/{evidence_id.removeprefix('sha256:')}.json")
    first = repo.first_added(head, starts) if len(starts) > 1 else (starts[0] if starts else None)
    return f"sha256:{first.removeprefix('evidence/').removesuffix('.json')}" if first else None


def records(tree: GitTree) -> Iterator[str]:
    """Every evidence id on the branch, sorted."""
    for name in tree.listdir("evidence"):
        if name.endswith(".json") and not name.endswith(".sigstore.json"):
            yield f"sha256:{name.removesuffix('.json')}"
