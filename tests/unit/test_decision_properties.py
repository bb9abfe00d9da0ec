"""Property-based: a decision depends only on its inputs, not on the order they come in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.gates.approvals import approvals
from reconciler.gates.freeze import freeze_window
from reconciler.gates.order import environment_order
from reconciler.models import Environment, Promotion, ReleaseLock
from reconciler.policy import PlannedGate, decide
from reconciler.protocols import Actor, ApprovalRecord, GateContext, PriorDecision

RID = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64
PEOPLE = [f"p{i}@example.com" for i in range(5)]
BASE = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
PLAN = [
    PlannedGate("environment-order", environment_order, {}),
    PlannedGate("freeze-window", freeze_window, {}),
    PlannedGate("approvals", approvals, {}),
]

actors = st.builds(
    lambda who, ok, code: Actor(
        who if ok else None, commit="c" * 40, verified=ok, code="" if ok else code, reason=code
    ),
    st.sampled_from(PEOPLE),
    st.booleans(),
    st.sampled_from(["unsigned", "unknown-key", "bad-signature"]),
)
approval_records = st.builds(
    lambda who, decision, same, signer: ApprovalRecord(who, decision, RID if same else OTHER, "", signer),
    st.sampled_from(PEOPLE),
    st.sampled_from(["approve", "reject"]),
    st.booleans(),
    actors,
)
priors = st.builds(
    lambda env, same, ok, minutes, n: PriorDecision(
        f"sha256:{n:064x}",
        env,
        RID if same else OTHER,
        "allow" if ok else "deny",
        BASE - timedelta(minutes=minutes),
    ),
    st.sampled_from(["dev", "qa"]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 600),
    st.integers(1, 10**6),
)
environments = st.fixed_dictionaries(
    {
        "required": st.integers(0, 3),
        "sod": st.booleans(),
        "soak": st.sampled_from([None, "30m", "2h"]),
        "groups": st.lists(st.sampled_from(["a", "b"]), unique=True),
    }
)


def _context(
    env: dict[str, Any],
    records: list[ApprovalRecord],
    history: list[PriorDecision],
    requester: Actor,
    now: datetime,
    groups: dict[str, tuple[str, ...]],
) -> GateContext:
    manifest: dict[str, Any] = {
        "apiVersion": "stella/v1",
        "kind": "Environment",
        "name": "prod",
        "promotesFrom": "dev",
        "approvals": {"required": env["required"], "groups": env["groups"], "separationOfDuties": env["sod"]},
        "freezeWindows": [{"cron": "0 18 * * FRI", "duration": "62h", "reason": "weekend"}],
    }
    if env["soak"]:
        manifest["soak"] = env["soak"]
    return GateContext(
        now=now,
        promotion_id="app--prod",
        promotion=Promotion.model_validate(
            {"apiVersion": "stella/v1", "kind": "Promotion", "release": "app", "environment": "prod"}
        ),
        release=ReleaseLock.model_validate(
            {
                "name": "app",
                "id": RID,
                "components": {"web": {"image": "r.example.com/web", "tag": "1", "digest": RID}},
            }
        ),
        environment=Environment.model_validate(manifest),
        options={},
        requester=requester,
        history=tuple(history),
        approvals=tuple(records),
        groups=groups,
    )


@settings(max_examples=150, deadline=None)
@given(
    env=environments,
    records=st.lists(approval_records, max_size=6, unique_by=lambda r: r.identity),
    history=st.lists(priors, max_size=5, unique_by=lambda p: p.evidence),
    requester=actors,
    minutes=st.integers(0, 60 * 24 * 7),
    data=st.data(),
)
def test_decision_does_not_depend_on_order(
    env: dict[str, Any],
    records: list[ApprovalRecord],
    history: list[PriorDecision],
    requester: Actor,
    minutes: int,
    data: st.DataObject,
) -> None:
    now = BASE + timedelta(minutes=minutes)
    groups = {
        "a": ("p0@example.com", "p1@example.com", "p2@example.com"),
        "b": ("p3@example.com", "p2@example.com"),
    }
    first = decide(_context(env, records, history, requester, now, groups), PLAN)
    shuffled_groups = {
        name: tuple(data.draw(st.permutations(members))) for name, members in reversed(list(groups.items()))
    }
    second = decide(
        _context(
            env,
            data.draw(st.permutations(records)),
            data.draw(st.permutations(history)),
            requester,
            now,
            shuffled_groups,
        ),
        PLAN,
    )
    assert first == second
    assert first.reasons == sorted(first.reasons)
