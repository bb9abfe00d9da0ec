"""The `approvals` core gate: N-of-M approvals from signed commits, with separation of duties.

PURE: it judges the `ApprovalRecord`s the core hands in (each with the verified signer of the commit
that last wrote the approval file); it runs no ssh-keygen and reads no Git itself. An approval counts
only when it is bound to this release id (and, when it names one, this environment), its commit
descends from the promotion file's last change (else it is `stale`), its commit is signed by a key
`trust/allowed_signers` gives the identity the file is named after, that identity is in one of the
environment's groups, and, with separation of duties, it is not the requester's. One counted `reject` denies.

The policy is the environment's `approvals`, except for a rollback (a promotion with `rollback: true`)
in an environment that sets `rollbackApprovals`: then that one (`approval_policy`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models import ApprovalPolicy
from ..protocols import ApprovalRecord, GateContext, GateResult, PluginManifest
from ..version import __version__

GATE = "approvals"


def approval_policy(ctx: GateContext) -> ApprovalPolicy | None:
    """The approvals this promotion needs: the environment's `rollbackApprovals` for a rollback when
    it sets them, else its `approvals` (None: none)."""
    env = ctx.environment
    if ctx.promotion.rollback and env.rollbackApprovals is not None:
        return env.rollbackApprovals
    return env.approvals


def _rollback_policy(ctx: GateContext) -> bool:
    """Whether `approval_policy` is the environment's `rollbackApprovals`."""
    return ctx.promotion.rollback and ctx.environment.rollbackApprovals is not None


@dataclass(frozen=True)
class Judged:
    """One approval file, whether it counts, and if not, why (a stable code and a sentence)."""

    record: ApprovalRecord
    counts: bool
    code: str = "counted"
    message: str = ""


def judge(record: ApprovalRecord, ctx: GateContext, members: set[str] | None) -> Judged:
    """Whether one approval counts for this promotion."""
    policy = approval_policy(ctx)
    signer = record.signer
    who = record.identity
    if record.release != ctx.release.id:
        return Judged(
            record,
            False,
            "release-mismatch",
            f"{who} approved release {record.release}, not {ctx.release.id}",
        )
    if record.environment is not None and record.environment != ctx.environment.name:
        return Judged(
            record,
            False,
            "environment-mismatch",
            f"{who} approved environment {record.environment}, not {ctx.environment.name}",
        )
    if record.stale:
        return Judged(
            record,
            False,
            "stale",
            f"{who}'s approval was committed before the promotion file's last change; approve again",
        )
    if not signer.verified:
        return Judged(record, False, signer.code or "bad-signature", f"{who}: {signer.reason}")
    if signer.identity != who:
        if who in record.earlier_signers:
            return Judged(
                record,
                False,
                "changed-by-other",
                f"{who}'s approval was changed afterwards by {signer.identity}",
            )
        return Judged(
            record,
            False,
            "identity-mismatch",
            f"the approval file names {who} but its commit is signed by {signer.identity}",
        )
    if members is not None and who not in members:
        groups = ", ".join(policy.groups) if policy else ""
        return Judged(record, False, "not-in-group", f"{who} is not in the approver groups ({groups})")
    requester = ctx.requester
    if policy and policy.separationOfDuties and requester.verified and requester.identity == who:
        return Judged(record, False, "self-approval", f"{who} requested this promotion and cannot approve it")
    return Judged(record, True)


def members_of(ctx: GateContext) -> set[str] | None:
    """Who may approve: the members of the environment's groups (None: no groups, any trusted identity)."""
    policy = approval_policy(ctx)
    if policy is None or not policy.groups:
        return None
    return {member for group in policy.groups for member in ctx.groups.get(group, ())}


class ApprovalsGate:
    manifest = PluginManifest(
        name=GATE,
        version=__version__,
        kinds=("gate",),
        network=False,
        description="N-of-M approvals from SSH-signed commits, with separation of duties",
    )

    def evaluate(self, ctx: GateContext) -> GateResult:
        policy = approval_policy(ctx)
        rollback = _rollback_policy(ctx)
        if policy is None or policy.required == 0:
            if rollback:
                return GateResult(
                    GATE,
                    "pass",
                    "no-approvals-required",
                    "no approvals required for a rollback (rollbackApprovals)",
                    facts={"policy": "rollbackApprovals"},
                )
            return GateResult(GATE, "pass", "no-approvals-required", "no approvals required")
        members = members_of(ctx)
        judged = [judge(r, ctx, members) for r in sorted(ctx.approvals, key=lambda r: r.identity)]
        approvers = sorted({j.record.identity for j in judged if j.counts and j.record.decision == "approve"})
        rejecters = [j.record for j in judged if j.counts and j.record.decision == "reject"]
        requester = ctx.requester
        facts: dict[str, object] = {
            "required": policy.required,
            "approvers": approvers,
            "rejected": sorted(r.identity for r in rejecters),
            "ignored": [
                {"identity": j.record.identity, "reason": j.code, "message": j.message}
                for j in judged
                if not j.counts
            ],
        }
        if rollback:
            facts["policy"] = "rollbackApprovals"
        excluded = {requester.identity} if policy.separationOfDuties and requester.verified else set()
        if members is not None:
            answered = set(approvers) | {r.identity for r in rejecters}
            facts["canApprove"] = sorted(members - answered - excluded)
        if rejecters:
            first = rejecters[0]
            comment = f": {first.comment}" if first.comment else ""
            return GateResult(GATE, "fail", "rejected", f"rejected by {first.identity}{comment}", facts=facts)
        if policy.separationOfDuties and not requester.verified:
            reason = requester.reason or "the requester is not known"
            return GateResult(
                GATE,
                "pending",
                "requester-unverified",
                f"separation of duties needs a verified requester: {reason}",
                facts=facts,
            )
        ignored = "; ".join(j.message for j in judged if not j.counts)
        suffix = f" (not counted: {ignored})" if ignored else ""
        if len(approvers) >= policy.required:
            return GateResult(
                GATE, "pass", "approved", f"approved by {', '.join(approvers)}{suffix}", facts=facts
            )
        have = f"{len(approvers)} of {policy.required} approval(s)"
        by = f" from {', '.join(approvers)}" if approvers else ""
        can = facts.get("canApprove")
        still = f"; can approve: {', '.join(can)}" if isinstance(can, list) and can else ""
        return GateResult(GATE, "pending", "awaiting-approvals", f"{have}{by}{still}{suffix}", facts=facts)


approvals = ApprovalsGate()
