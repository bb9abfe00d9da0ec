"""The one seam of a decision: its recorded inputs, and the gate context and plan built from them.

A decision's `DecisionInputs` (written to `inputs/<hex>.json`) hold everything its gates see. The
reconcile pass, `plan` and `why` first gather them (`gather_inputs`), then build the gate context and the
gate plan FROM those inputs (`gate_context`, `gate_plan`) and decide; `replay` reads the recorded inputs
and calls the same two functions. So a replay sees exactly what the pass saw, by construction: there is
no second copy of the context to keep equal.

PURE apart from what is handed in: the repository files come as a `FileSource`, the gates as the
discovered plugins; no Git, network or clock here.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .models import (
    DecisionInputs,
    Environment,
    InputActor,
    InputApproval,
    InputGate,
    InputPrior,
    Promotion,
    ReleaseLock,
)
from .policy import Decision, PlannedGate, decide
from .protocols import Actor, ApprovalRecord, FileSource, Gate, GateContext, PriorDecision


class GateSource(Protocol):
    """What `gate_plan` needs of the discovered plugins: the gates by name, and why one is missing."""

    @property
    def gates(self) -> Mapping[str, Gate]: ...

    def unavailable(self, kind: str, name: str) -> str: ...


def input_actor(actor: Actor, payload: str | None = None, signature: str | None = None) -> InputActor:
    """An actor as recorded; `payload` and `signature` (base64 / armored) let an auditor re-check it."""
    return InputActor(
        identity=actor.identity,
        commit=actor.commit,
        key=actor.key,
        verified=actor.verified,
        reason=actor.reason,
        code=actor.code,
        time=actor.time,
        payload=payload,
        signature=signature,
    )


def actor_of(value: InputActor) -> Actor:
    return Actor(
        value.identity,
        commit=value.commit,
        key=value.key,
        verified=value.verified,
        reason=value.reason,
        code=value.code,
        time=value.time,
    )


@dataclass(frozen=True)
class Gathered:
    """What a pass found for one promotion before deciding it (besides the manifests themselves)."""

    requester: Actor
    requested_at: datetime | None
    approvals: tuple[ApprovalRecord, ...]
    history: tuple[PriorDecision, ...]
    gates: tuple[InputGate, ...]
    groups: Mapping[str, tuple[str, ...]]
    template: dict[str, str] | None


def history_environments(promotion: Promotion, environment: Environment) -> tuple[str, ...]:
    """The environments whose earlier decisions (of the same release id) a decision's history holds:
    the environment it promotes from, and for a rollback the environment itself (a rollback passes
    the environment-order gate on its own earlier allow there)."""
    names = [environment.promotesFrom] if environment.promotesFrom else []
    if promotion.rollback and environment.name not in names:
        names.append(environment.name)
    return tuple(names)


def gather_inputs(
    gathered: Gathered,
    *,
    tenant: str,
    source_commit: str,
    promotion_id: str,
    promotion: Promotion,
    release: ReleaseLock,
    environment: Environment,
    decided_at: datetime,
    policy: str | None,
    signed: Callable[[Actor], InputActor],
) -> DecisionInputs:
    """The inputs record of one decision. `signed` turns an actor into its recorded form (with the
    signed commit's payload and signature when the pass has them)."""
    return DecisionInputs(
        tenant=tenant,
        sourceCommit=source_commit,
        promotionId=promotion_id,
        promotion=promotion,
        release=release,
        environment=environment,
        requester=signed(gathered.requester),
        approvals=[
            InputApproval(
                identity=a.identity,
                decision=a.decision,
                release=a.release,
                comment=a.comment,
                signer=signed(a.signer),
                earlierSigners=list(a.earlier_signers),
                environment=a.environment,
                stale=a.stale,
            )
            for a in gathered.approvals
        ],
        groups={k: list(v) for k, v in gathered.groups.items()},
        history=[
            InputPrior(
                evidence=p.evidence,
                environment=p.environment,
                releaseId=p.release_id,
                result=p.result,
                decidedAt=p.decided_at,
            )
            for p in gathered.history
        ],
        gates=list(gathered.gates),
        requestedAt=gathered.requested_at,
        decidedAt=decided_at,
        template=gathered.template,
        policy=policy,
    )


def gate_context(
    inputs: DecisionInputs,
    files: FileSource,
    *,
    mirror: str,
    offline: bool,
    extra: Mapping[str, Any] | None = None,
) -> GateContext:
    """The context every gate of the decision sees, built from its inputs alone (plus the repository
    files at the source commit under the ratified policy, and what the core opened for plugins)."""
    return GateContext(
        now=inputs.decidedAt,
        promotion_id=inputs.promotionId,
        promotion=inputs.promotion,
        release=inputs.release,
        environment=inputs.environment,
        options={},
        requester=actor_of(inputs.requester),
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
                signer=actor_of(a.signer),
                earlier_signers=tuple(a.earlierSigners),
                environment=a.environment,
                stale=a.stale,
            )
            for a in inputs.approvals
        ),
        groups={name: tuple(members) for name, members in inputs.groups.items()},
        files=files,
        mirror=mirror,
        offline=offline,
        **dict(extra or {}),
    )


def gate_plan(gates: Sequence[InputGate], plugins: GateSource) -> tuple[list[PlannedGate], list[str]]:
    """The gates to run, in the recorded order with the recorded options, and the version differences
    between what was recorded and what is installed (none when the inputs were just gathered)."""
    plan, differences = [], []
    for recorded in gates:
        gate = plugins.gates.get(recorded.name)
        if gate is None:
            unavailable = plugins.unavailable("gates", recorded.name)
            plan.append(PlannedGate(recorded.name, None, recorded.options, unavailable))
            continue
        if gate.manifest.version != recorded.version:
            differences.append(
                f"gate {recorded.name}: recorded with version {recorded.version}, "
                f"installed version is {gate.manifest.version}"
            )
        plan.append(PlannedGate(recorded.name, gate, recorded.options, version=gate.manifest.version))
    return plan, differences


def decide_inputs(
    inputs: DecisionInputs,
    files: FileSource,
    plugins: GateSource,
    *,
    mirror: str,
    offline: bool,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Decision, list[str]]:
    """Decide from inputs: the one path of reconcile, `plan`, `why` and `replay`."""
    plan, differences = gate_plan(inputs.gates, plugins)
    ctx = gate_context(inputs, files, mirror=mirror, offline=offline, extra=extra)
    return decide(ctx, plan), differences


def encode_signed(payload: bytes | None, signature: bytes | None) -> tuple[str | None, str | None]:
    """What decision inputs record of a signed commit: base64 of the payload, the armored signature."""
    if payload is None or signature is None:
        return None, None
    return base64.b64encode(payload).decode("ascii"), signature.decode("ascii", "replace")
