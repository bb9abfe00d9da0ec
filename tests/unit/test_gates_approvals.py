"""The approvals gate, table-driven: every reason an approval does not count, SoD, reject, N-of-M."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.gates.approvals import approvals
from reconciler.models import Environment, Promotion, ReleaseLock
from reconciler.protocols import Actor, ApprovalRecord, GateContext, GateResult

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
RID = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64
RM, PL, QA, REQ = "rm@example.com", "pl@example.com", "qa@example.com", "req@example.com"
GROUPS = {"release-managers": (RM, PL, REQ), "qa": (QA,)}


def signed(who: str) -> Actor:
    return Actor(who, commit="c" * 40, key="SHA256:key-of-" + who, verified=True, time=NOW)


def unverified(code: str, reason: str) -> Actor:
    return Actor(None, commit="c" * 40, verified=False, code=code, reason=reason)


def approval(
    who: str,
    signer: Actor | None = None,
    *,
    decision: str = "approve",
    release: str = RID,
    comment: str = "",
    earlier: tuple[str, ...] = (),
) -> ApprovalRecord:
    return ApprovalRecord(who, decision, release, comment, signer or signed(who), earlier)  # type: ignore[arg-type]


def ctx(
    records: list[ApprovalRecord], *, policy: dict[str, Any] | None = None, requester: Actor | None = None
) -> GateContext:
    env: dict[str, Any] = {"apiVersion": "stella/v1", "kind": "Environment", "name": "prod"}
    if policy is not None:
        env["approvals"] = policy
    return GateContext(
        now=NOW,
        promotion_id="app-1--prod",
        promotion=Promotion.model_validate(
            {"apiVersion": "stella/v1", "kind": "Promotion", "release": "app-1", "environment": "prod"}
        ),
        release=ReleaseLock.model_validate(
            {
                "name": "app-1",
                "id": RID,
                "components": {"web": {"image": "r.example.com/web", "tag": "1", "digest": RID}},
            }
        ),
        environment=Environment.model_validate(env),
        options={},
        requester=requester or signed(REQ),
        approvals=tuple(records),
        groups=GROUPS,
    )


TWO = {"required": 2, "groups": ["release-managers"], "separationOfDuties": True}


def result(status: str, reason: str, message: str, **facts: Any) -> GateResult:
    return GateResult("approvals", status, reason, message, facts=facts)  # type: ignore[arg-type]


def ignored(who: str, reason: str, message: str) -> dict[str, str]:
    return {"identity": who, "reason": reason, "message": message}


CASES = [
    pytest.param(
        ctx([]),
        GateResult("approvals", "pass", "no-approvals-required", "no approvals required"),
        id="no-policy",
    ),
    pytest.param(
        ctx([], policy={"required": 0}),
        GateResult("approvals", "pass", "no-approvals-required", "no approvals required"),
        id="zero-required",
    ),
    pytest.param(
        ctx([approval(RM), approval(PL)], policy=TWO),
        result(
            "pass",
            "approved",
            f"approved by {PL}, {RM}",
            required=2,
            approvers=[PL, RM],
            rejected=[],
            ignored=[],
            canApprove=[],
        ),
        id="two-of-two",
    ),
    pytest.param(
        ctx([approval(RM)], policy=TWO),
        result(
            "pending",
            "awaiting-approvals",
            f"1 of 2 approval(s) from {RM}; can approve: {PL}",
            required=2,
            approvers=[RM],
            rejected=[],
            ignored=[],
            canApprove=[PL],
        ),
        id="one-of-two",
    ),
    pytest.param(
        ctx([approval(RM), approval(PL, release=OTHER)], policy=TWO),
        result(
            "pending",
            "awaiting-approvals",
            f"1 of 2 approval(s) from {RM}; can approve: {PL} (not counted: {PL} approved release {OTHER}, not {RID})",
            required=2,
            approvers=[RM],
            rejected=[],
            ignored=[ignored(PL, "release-mismatch", f"{PL} approved release {OTHER}, not {RID}")],
            canApprove=[PL],
        ),
        id="other-release-id",
    ),
    pytest.param(
        ctx(
            [approval(RM), approval(PL, unverified("unsigned", "commit cccccccccccc is not signed"))],
            policy=TWO,
        ),
        result(
            "pending",
            "awaiting-approvals",
            f"1 of 2 approval(s) from {RM}; can approve: {PL} (not counted: {PL}: commit cccccccccccc is not signed)",
            required=2,
            approvers=[RM],
            rejected=[],
            ignored=[ignored(PL, "unsigned", f"{PL}: commit cccccccccccc is not signed")],
            canApprove=[PL],
        ),
        id="unsigned-commit",
    ),
    pytest.param(
        ctx(
            [
                approval(RM),
                approval(
                    PL,
                    unverified("unknown-key", "signed with a key that trust/allowed_signers does not list"),
                ),
            ],
            policy=TWO,
        ),
        result(
            "pending",
            "awaiting-approvals",
            f"1 of 2 approval(s) from {RM}; can approve: {PL} (not counted: {PL}: signed with a key that "
            "trust/allowed_signers does not list)",
            required=2,
            approvers=[RM],
            rejected=[],
            ignored=[
                ignored(
                    PL, "unknown-key", f"{PL}: signed with a key that trust/allowed_signers does not list"
                )
            ],
            canApprove=[PL],
        ),
        id="unknown-key",
    ),
    pytest.param(
        ctx(
            [
                approval(RM),
                approval(
                    PL,
                    unverified(
                        "bad-signature", "the signature does not verify for pl@example.com (tampered commit?)"
                    ),
                ),
            ],
            policy=TWO,
        ),
        result(
            "pending",
            "awaiting-approvals",
            f"1 of 2 approval(s) from {RM}; can approve: {PL} (not counted: {PL}: the signature does not verify "
            "for pl@example.com (tampered commit?))",
            required=2,
            approvers=[RM],
            rejected=[],
            ignored=[
                ignored(
                    PL,
                    "bad-signature",
                    f"{PL}: the signature does not verify for pl@example.com (tampered commit?)",
                )
            ],
            canApprove=[PL],
        ),
        id="bad-signature",
    ),
    pytest.param(
        ctx([approval(RM), approval(PL, signed(RM))], policy=TWO),
        result(
            "pending",
            "awaiting-approvals",
            f"1 of 2 approval(s) from {RM}; can approve: {PL} (not counted: the approval file names {PL} but its "
            f"commit is signed by {RM})",
            required=2,
            approvers=[RM],
            rejected=[],
            ignored=[
                ignored(
                    PL, "identity-mismatch", f"the approval file names {PL} but its commit is signed by {RM}"
                )
            ],
            canApprove=[PL],
        ),
        id="forged",
    ),
    pytest.param(
        ctx([approval(RM), approval(PL, signed(RM), earlier=(PL,))], policy=TWO),
        result(
            "pending",
            "awaiting-approvals",
            f"1 of 2 approval(s) from {RM}; can approve: {PL} (not counted: {PL}'s approval was changed afterwards by {RM})",
            required=2,
            approvers=[RM],
            rejected=[],
            ignored=[ignored(PL, "changed-by-other", f"{PL}'s approval was changed afterwards by {RM}")],
            canApprove=[PL],
        ),
        id="changed-by-someone-else",
    ),
    pytest.param(
        ctx([approval(RM), approval(QA)], policy=TWO),
        result(
            "pending",
            "awaiting-approvals",
            f"1 of 2 approval(s) from {RM}; can approve: {PL} (not counted: {QA} is not in the approver groups "
            "(release-managers))",
            required=2,
            approvers=[RM],
            rejected=[],
            ignored=[ignored(QA, "not-in-group", f"{QA} is not in the approver groups (release-managers)")],
            canApprove=[PL],
        ),
        id="not-in-group",
    ),
    pytest.param(
        ctx([approval(RM), approval(REQ)], policy=TWO),
        result(
            "pending",
            "awaiting-approvals",
            f"1 of 2 approval(s) from {RM}; can approve: {PL} (not counted: {REQ} requested this promotion and "
            "cannot approve it)",
            required=2,
            approvers=[RM],
            rejected=[],
            ignored=[ignored(REQ, "self-approval", f"{REQ} requested this promotion and cannot approve it")],
            canApprove=[PL],
        ),
        id="self-approval-under-sod",
    ),
    pytest.param(
        ctx([approval(RM), approval(REQ)], policy={**TWO, "separationOfDuties": False}),
        result(
            "pass",
            "approved",
            f"approved by {REQ}, {RM}",
            required=2,
            approvers=[REQ, RM],
            rejected=[],
            ignored=[],
            canApprove=[PL],
        ),
        id="self-approval-without-sod",
    ),
    pytest.param(
        ctx([approval(RM), approval(PL, decision="reject", comment="breaks checkout")], policy=TWO),
        result(
            "fail",
            "rejected",
            f"rejected by {PL}: breaks checkout",
            required=2,
            approvers=[RM],
            rejected=[PL],
            ignored=[],
            canApprove=[],
        ),
        id="one-reject-blocks",
    ),
    pytest.param(
        ctx([approval(RM), approval(PL), approval(QA, signed(QA), decision="reject")], policy=TWO),
        result(
            "pass",
            "approved",
            f"approved by {PL}, {RM} (not counted: {QA} is not in the approver groups (release-managers))",
            required=2,
            approvers=[PL, RM],
            rejected=[],
            ignored=[ignored(QA, "not-in-group", f"{QA} is not in the approver groups (release-managers)")],
            canApprove=[],
        ),
        id="reject-that-does-not-count",
    ),
    pytest.param(
        ctx(
            [approval(RM), approval(PL)],
            policy=TWO,
            requester=unverified("unsigned", "commit cccccccccccc is not signed"),
        ),
        result(
            "pending",
            "requester-unverified",
            "separation of duties needs a verified requester: commit cccccccccccc is not signed",
            required=2,
            approvers=[PL, RM],
            rejected=[],
            ignored=[],
            canApprove=[REQ],
        ),
        id="unknown-requester-fails-closed",
    ),
    pytest.param(
        ctx(
            [approval(RM), approval(PL)],
            policy={**TWO, "separationOfDuties": False},
            requester=unverified("unsigned", "commit cccccccccccc is not signed"),
        ),
        result(
            "pass",
            "approved",
            f"approved by {PL}, {RM}",
            required=2,
            approvers=[PL, RM],
            rejected=[],
            ignored=[],
            canApprove=[REQ],
        ),
        id="unknown-requester-without-sod",
    ),
    pytest.param(
        ctx([approval(RM), approval(QA)], policy={"required": 2, "groups": ["release-managers", "qa"]}),
        result(
            "pass",
            "approved",
            f"approved by {QA}, {RM}",
            required=2,
            approvers=[QA, RM],
            rejected=[],
            ignored=[],
            canApprove=[PL],
        ),
        id="n-of-m-across-groups",
    ),
    pytest.param(
        ctx([approval(RM), approval("anyone@example.com")], policy={"required": 2}),
        result(
            "pass",
            "approved",
            f"approved by anyone@example.com, {RM}",
            required=2,
            approvers=["anyone@example.com", RM],
            rejected=[],
            ignored=[],
        ),
        id="no-groups-any-trusted-identity",
    ),
]


@pytest.mark.parametrize(("context", "expected"), CASES)
def test_approvals_gate(context: GateContext, expected: GateResult) -> None:
    assert approvals.evaluate(context) == expected
