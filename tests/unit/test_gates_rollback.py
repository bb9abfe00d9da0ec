"""Rollback promotions (`rollback: true`) at the gates: environment order counts the environment's own
earlier allow instead of `promotesFrom` and `soak`; approvals follow `rollbackApprovals` when set.

Table-driven, whole results asserted. Also: which environments' decisions a decision's history holds
(`decision.history_environments`), since that is what the environment-order gate judges.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from reconciler.decision import history_environments
from reconciler.gates.approvals import approval_policy, approvals
from reconciler.gates.order import environment_order
from reconciler.models import ApprovalPolicy, Environment, Promotion, ReleaseLock
from reconciler.protocols import Actor, ApprovalRecord, GateContext, GateResult, GateStatus, PriorDecision

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
RID = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64
EV_A, EV_B, EV_C = ("sha256:" + c * 64 for c in "abc")
RM, PL, ONCALL, REQ = "rm@example.com", "pl@example.com", "oncall@example.com", "req@example.com"
GROUPS = {"release-managers": (RM, PL, REQ), "oncall": (ONCALL, REQ)}


def environment(**fields: Any) -> Environment:
    return Environment.model_validate(
        {"apiVersion": "stella/v1", "kind": "Environment", "name": "prod", **fields}
    )


def signed(who: str) -> Actor:
    return Actor(who, commit="c" * 40, key="SHA256:key-of-" + who, verified=True, time=NOW)


def context(
    env: Environment,
    *,
    rollback: bool = True,
    history: tuple[PriorDecision, ...] = (),
    records: tuple[ApprovalRecord, ...] = (),
) -> GateContext:
    """Release shop-1.3.0 (RID) to `env`, as a rollback unless told otherwise, requested by REQ."""
    promotion = {
        "apiVersion": "stella/v1",
        "kind": "Promotion",
        "release": "shop-1.3.0",
        "environment": env.name,
    }
    return GateContext(
        now=NOW,
        promotion_id=f"shop-1.3.0--{env.name}" + ("--rollback-1" if rollback else ""),
        promotion=Promotion.model_validate({**promotion, "rollback": rollback}),
        release=ReleaseLock.model_validate(
            {
                "name": "shop-1.3.0",
                "id": RID,
                "components": {
                    "web": {"image": "registry.example.com/shop/web", "tag": "1.3.0", "digest": RID}
                },
            }
        ),
        environment=env,
        options={},
        requester=signed(REQ),
        history=history,
        approvals=records,
        groups=GROUPS,
    )


def prior(
    evidence: str,
    ago: timedelta,
    *,
    result: Literal["allow", "deny"] = "allow",
    environment: str = "prod",
    release_id: str = RID,
) -> PriorDecision:
    return PriorDecision(evidence, environment, release_id, result, decided_at=NOW - ago)


def order(status: GateStatus, reason: str, message: str, **facts: Any) -> GateResult:
    return GateResult("environment-order", status, reason, message, facts=facts)


NEVER = "rollback: release shop-1.3.0 ({rid}) was never allowed in prod; a rollback goes back to a release prod ran before"
FAIL = order("fail", "never-allowed-here", NEVER.format(rid=RID), rollback=True)


def passed(evidence: str, at: str) -> GateResult:
    return order(
        "pass",
        "allowed-here-before",
        f"rollback: release shop-1.3.0 was allowed in prod at {at} (evidence {evidence}); "
        "its own earlier allow counts instead of promotesFrom and soak",
        rollback=True,
        allowedHere=evidence,
        allowedAt=at,
    )


ORDER = [
    pytest.param(
        {}, (prior(EV_A, timedelta(days=3)),), passed(EV_A, "2026-11-28T10:00:00Z"), id="allowed-here"
    ),
    pytest.param(
        {"promotesFrom": "staging", "soak": "1h"},
        (prior(EV_A, timedelta(minutes=1)),),
        passed(EV_A, "2026-12-01T09:59:00Z"),
        id="own-allow-needs-no-soak-nor-prior-environment",
    ),
    pytest.param(
        {},
        (
            prior(EV_B, timedelta(days=1)),
            prior(EV_A, timedelta(days=5)),
            prior(EV_C, timedelta(hours=1), result="deny"),
        ),
        passed(EV_B, "2026-11-30T10:00:00Z"),
        id="the-latest-allow-is-named",
    ),
    pytest.param({}, (), FAIL, id="no-history"),
    pytest.param({"promotesFrom": "staging"}, (), FAIL, id="no-history-with-promotesFrom"),
    pytest.param(
        {"promotesFrom": "staging"},
        (prior(EV_A, timedelta(days=2), environment="staging"),),
        FAIL,
        id="allowed-only-in-the-prior-environment",
    ),
    pytest.param({}, (prior(EV_A, timedelta(days=2), result="deny"),), FAIL, id="denied-here"),
    pytest.param({}, (prior(EV_A, timedelta(days=2), release_id=OTHER),), FAIL, id="another-release-id-here"),
    pytest.param(
        {},
        (prior(EV_A, timedelta(days=2), environment="dev"),),
        FAIL,
        id="allowed-in-an-unrelated-environment",
    ),
]


@pytest.mark.parametrize(("env", "history", "expected"), ORDER)
def test_environment_order_of_a_rollback(
    env: dict[str, Any], history: tuple[PriorDecision, ...], expected: GateResult
) -> None:
    assert environment_order.evaluate(context(environment(**env), history=history)) == expected


def test_an_ordinary_promotion_still_needs_the_prior_environment() -> None:
    """Its own earlier allow in prod does not let an ordinary promotion skip staging."""
    env = environment(promotesFrom="staging")
    result = environment_order.evaluate(
        context(env, rollback=False, history=(prior(EV_A, timedelta(days=1)),))
    )
    assert result == order(
        "pending",
        "not-in-prior-environment",
        "release shop-1.3.0 has not been allowed in staging yet; prod promotes from staging",
    )


def approval(who: str, *, decision: Literal["approve", "reject"] = "approve") -> ApprovalRecord:
    return ApprovalRecord(who, decision, RID, "", signed(who))


def approvals_result(status: GateStatus, reason: str, message: str, **facts: Any) -> GateResult:
    return GateResult("approvals", status, reason, message, facts=facts)


ONE_RM = {"required": 1, "groups": ["release-managers"], "separationOfDuties": True}
TWO_RM = {"required": 2, "groups": ["release-managers"], "separationOfDuties": True}
ONE_ONCALL_NO_SOD = {"required": 1, "groups": ["oncall"], "separationOfDuties": False}

APPROVALS = [
    pytest.param(
        {"approvals": ONE_RM, "rollbackApprovals": TWO_RM},
        True,
        (approval(RM),),
        approvals_result(
            "pending",
            "awaiting-approvals",
            "1 of 2 approval(s) from rm@example.com; can approve: pl@example.com",
            required=2,
            approvers=[RM],
            rejected=[],
            ignored=[],
            canApprove=[PL],
            policy="rollbackApprovals",
        ),
        id="rollback-needs-two",
    ),
    pytest.param(
        {"approvals": ONE_RM, "rollbackApprovals": TWO_RM},
        True,
        (approval(RM), approval(PL)),
        approvals_result(
            "pass",
            "approved",
            "approved by pl@example.com, rm@example.com",
            required=2,
            approvers=[PL, RM],
            rejected=[],
            ignored=[],
            canApprove=[],
            policy="rollbackApprovals",
        ),
        id="rollback-with-two",
    ),
    pytest.param(
        {"approvals": ONE_RM, "rollbackApprovals": TWO_RM},
        False,
        (approval(RM),),
        approvals_result(
            "pass",
            "approved",
            "approved by rm@example.com",
            required=1,
            approvers=[RM],
            rejected=[],
            ignored=[],
            canApprove=[PL],
        ),
        id="ordinary-promotion-keeps-approvals",
    ),
    pytest.param(
        {"approvals": ONE_RM},
        True,
        (approval(RM),),
        approvals_result(
            "pass",
            "approved",
            "approved by rm@example.com",
            required=1,
            approvers=[RM],
            rejected=[],
            ignored=[],
            canApprove=[PL],
        ),
        id="rollback-without-rollbackApprovals-uses-approvals",
    ),
    pytest.param(
        {"approvals": ONE_RM, "rollbackApprovals": ONE_ONCALL_NO_SOD},
        True,
        (approval(RM),),
        approvals_result(
            "pending",
            "awaiting-approvals",
            "0 of 1 approval(s); can approve: oncall@example.com, req@example.com "
            "(not counted: rm@example.com is not in the approver groups (oncall))",
            required=1,
            approvers=[],
            rejected=[],
            ignored=[
                {
                    "identity": RM,
                    "reason": "not-in-group",
                    "message": "rm@example.com is not in the approver groups (oncall)",
                }
            ],
            canApprove=[ONCALL, REQ],
            policy="rollbackApprovals",
        ),
        id="rollback-groups-differ",
    ),
    pytest.param(
        {"approvals": ONE_RM, "rollbackApprovals": ONE_ONCALL_NO_SOD},
        True,
        (approval(REQ),),
        approvals_result(
            "pass",
            "approved",
            "approved by req@example.com",
            required=1,
            approvers=[REQ],
            rejected=[],
            ignored=[],
            canApprove=[ONCALL],
            policy="rollbackApprovals",
        ),
        id="rollback-without-separation-of-duties",
    ),
    pytest.param(
        {"approvals": ONE_RM, "rollbackApprovals": ONE_RM},
        True,
        (approval(REQ),),
        approvals_result(
            "pending",
            "awaiting-approvals",
            "0 of 1 approval(s); can approve: pl@example.com, rm@example.com "
            "(not counted: req@example.com requested this promotion and cannot approve it)",
            required=1,
            approvers=[],
            rejected=[],
            ignored=[
                {
                    "identity": REQ,
                    "reason": "self-approval",
                    "message": "req@example.com requested this promotion and cannot approve it",
                }
            ],
            canApprove=[PL, RM],
            policy="rollbackApprovals",
        ),
        id="rollback-self-approval",
    ),
    pytest.param(
        {"approvals": TWO_RM, "rollbackApprovals": {"required": 0}},
        True,
        (),
        approvals_result(
            "pass",
            "no-approvals-required",
            "no approvals required for a rollback (rollbackApprovals)",
            policy="rollbackApprovals",
        ),
        id="rollback-needs-none",
    ),
    pytest.param(
        {"approvals": ONE_RM, "rollbackApprovals": TWO_RM},
        True,
        (approval(RM), approval(PL, decision="reject")),
        approvals_result(
            "fail",
            "rejected",
            "rejected by pl@example.com",
            required=2,
            approvers=[RM],
            rejected=[PL],
            ignored=[],
            canApprove=[],
            policy="rollbackApprovals",
        ),
        id="rollback-rejected",
    ),
]


@pytest.mark.parametrize(("env", "rollback", "records", "expected"), APPROVALS)
def test_approvals_of_a_rollback(
    env: dict[str, Any], rollback: bool, records: tuple[ApprovalRecord, ...], expected: GateResult
) -> None:
    ctx = context(environment(**env), rollback=rollback, records=records)
    assert approvals.evaluate(ctx) == expected


@pytest.mark.parametrize(
    ("env", "rollback", "expected"),
    [
        pytest.param({"approvals": ONE_RM, "rollbackApprovals": TWO_RM}, True, TWO_RM, id="rollback"),
        pytest.param({"approvals": ONE_RM, "rollbackApprovals": TWO_RM}, False, ONE_RM, id="ordinary"),
        pytest.param({"approvals": ONE_RM}, True, ONE_RM, id="rollback-default"),
        pytest.param({"rollbackApprovals": TWO_RM}, False, None, id="ordinary-none"),
    ],
)
def test_approval_policy(env: dict[str, Any], rollback: bool, expected: dict[str, Any] | None) -> None:
    policy = approval_policy(context(environment(**env), rollback=rollback))
    assert policy == (None if expected is None else ApprovalPolicy.model_validate(expected))


@pytest.mark.parametrize(
    ("env", "rollback", "expected"),
    [
        pytest.param({"promotesFrom": "staging"}, False, ("staging",), id="ordinary"),
        pytest.param({}, False, (), id="ordinary-first-environment"),
        pytest.param({"promotesFrom": "staging"}, True, ("staging", "prod"), id="rollback"),
        pytest.param({}, True, ("prod",), id="rollback-first-environment"),
    ],
)
def test_history_environments(env: dict[str, Any], rollback: bool, expected: tuple[str, ...]) -> None:
    ctx = context(environment(**env), rollback=rollback)
    assert history_environments(ctx.promotion, ctx.environment) == expected
