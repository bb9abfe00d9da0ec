"""The environment-order gate: prior environment, release id, earliest allow, soak to the second."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from importlib.metadata import entry_points
from typing import Any, Literal

import pytest

import reconciler
from reconciler.gates.order import EnvironmentOrderGate, environment_order
from reconciler.models import Environment, Promotion, ReleaseLock
from reconciler.protocols import Actor, Gate, GateContext, GateResult, GateStatus, PriorDecision

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
RELEASE_ID = "sha256:" + "1" * 64
OTHER_RELEASE_ID = "sha256:" + "2" * 64
EV_A = "sha256:" + "a" * 64
EV_B = "sha256:" + "b" * 64
EV_C = "sha256:" + "c" * 64


def environment(**fields: Any) -> Environment:
    return Environment.model_validate(
        {"apiVersion": "stella/v1", "kind": "Environment", "name": "prod", **fields}
    )


def context(env: Environment, history: tuple[PriorDecision, ...] = (), now: datetime = NOW) -> GateContext:
    """A GateContext for release shop-1.4.0 (RELEASE_ID) promoted to `env`, requested by a verified user."""
    return GateContext(
        now=now,
        promotion_id=f"shop-1.4.0--{env.name}",
        promotion=Promotion.model_validate(
            {"apiVersion": "stella/v1", "kind": "Promotion", "release": "shop-1.4.0", "environment": env.name}
        ),
        release=ReleaseLock.model_validate(
            {
                "name": "shop-1.4.0",
                "id": RELEASE_ID,
                "components": {
                    "web": {
                        "image": "registry.example.com/shop/web",
                        "tag": "1.4.0",
                        "digest": "sha256:" + "f" * 64,
                    }
                },
            }
        ),
        environment=env,
        options={},
        requester=Actor(identity="dev@example.com", verified=True),
        history=history,
    )


def decision(
    evidence: str,
    ago: timedelta,
    result: Literal["allow", "deny"] = "allow",
    environment: str = "staging",
    release_id: str = RELEASE_ID,
) -> PriorDecision:
    """A decision recorded `ago` before NOW."""
    return PriorDecision(evidence, environment, release_id, result, decided_at=NOW - ago)


@dataclass(frozen=True)
class Row:
    env: dict[str, Any]
    history: tuple[PriorDecision, ...]
    expected: GateResult
    now: datetime = NOW


STAGING_1H = {"promotesFrom": "staging", "soak": "1h"}
NOT_IN_STAGING = "release shop-1.4.0 has not been allowed in staging yet; prod promotes from staging"


def result(status: GateStatus, reason: str, message: str, **kw: Any) -> GateResult:
    return GateResult("environment-order", status, reason, message, **kw)


ROWS = {
    "no-promotesFrom": Row(
        {},
        (decision(EV_A, timedelta(days=1)),),
        result("pass", "no-prior-environment", "prod has no prior environment (no promotesFrom)"),
    ),
    "no-history": Row(STAGING_1H, (), result("pending", "not-in-prior-environment", NOT_IN_STAGING)),
    "denied-in-prior": Row(
        STAGING_1H,
        (decision(EV_A, timedelta(hours=3), "deny"), decision(EV_B, timedelta(hours=2), "deny")),
        result(
            "pending",
            "not-in-prior-environment",
            f"release shop-1.4.0 was denied in staging at 2026-12-01T08:00:00Z (evidence {EV_B}) "
            "and has not been allowed there; prod promotes from staging",
            facts={"priorDenied": EV_B, "priorDecidedAt": "2026-12-01T08:00:00Z"},
        ),
    ),
    "allowed-30min-ago-soak-1h": Row(
        STAGING_1H,
        (decision(EV_A, timedelta(minutes=30)),),
        result(
            "pending",
            "soaking",
            f"release shop-1.4.0 was allowed in staging at 2026-12-01T09:30:00Z (evidence {EV_A}); "
            "soaking for 1h, until 2026-12-01T10:30:00Z",
            retry_at=datetime(2026, 12, 1, 10, 30, tzinfo=UTC),
            facts={"prior": EV_A, "priorDecidedAt": "2026-12-01T09:30:00Z"},
        ),
    ),
    "allowed-1s-short-of-soak": Row(
        STAGING_1H,
        (decision(EV_A, timedelta(minutes=59, seconds=59)),),
        result(
            "pending",
            "soaking",
            f"release shop-1.4.0 was allowed in staging at 2026-12-01T09:00:01Z (evidence {EV_A}); "
            "soaking for 1h, until 2026-12-01T10:00:01Z",
            retry_at=datetime(2026, 12, 1, 10, 0, 1, tzinfo=UTC),
            facts={"prior": EV_A, "priorDecidedAt": "2026-12-01T09:00:01Z"},
        ),
    ),
    "allowed-exactly-soak-ago": Row(
        STAGING_1H,
        (decision(EV_A, timedelta(hours=1)),),
        result(
            "pass",
            "soaked",
            f"release shop-1.4.0 was allowed in staging at 2026-12-01T09:00:00Z (evidence {EV_A}); "
            "soaked for 1h",
            facts={"prior": EV_A, "priorDecidedAt": "2026-12-01T09:00:00Z"},
        ),
    ),
    "allowed-no-soak": Row(
        {"promotesFrom": "staging"},
        (decision(EV_A, timedelta(seconds=1)),),
        result(
            "pass",
            "soaked",
            f"release shop-1.4.0 was allowed in staging at 2026-12-01T09:59:59Z (evidence {EV_A}); "
            "no soak required",
            facts={"prior": EV_A, "priorDecidedAt": "2026-12-01T09:59:59Z"},
        ),
    ),
    "other-release-allowed": Row(
        STAGING_1H,
        (decision(EV_A, timedelta(days=1), release_id=OTHER_RELEASE_ID),),
        result("pending", "not-in-prior-environment", NOT_IN_STAGING),
    ),
    "allowed-in-another-environment": Row(
        STAGING_1H,
        (decision(EV_A, timedelta(days=1), environment="dev"),),
        result("pending", "not-in-prior-environment", NOT_IN_STAGING),
    ),
    "two-allows-earliest-counts": Row(
        STAGING_1H,
        (decision(EV_B, timedelta(minutes=10)), decision(EV_A, timedelta(hours=2))),
        result(
            "pass",
            "soaked",
            f"release shop-1.4.0 was allowed in staging at 2026-12-01T08:00:00Z (evidence {EV_A}); "
            "soaked for 1h",
            facts={"prior": EV_A, "priorDecidedAt": "2026-12-01T08:00:00Z"},
        ),
    ),
    "two-allows-both-soaking": Row(
        {"promotesFrom": "staging", "soak": "1d"},
        (decision(EV_C, timedelta(hours=1)), decision(EV_B, timedelta(hours=5))),
        result(
            "pending",
            "soaking",
            f"release shop-1.4.0 was allowed in staging at 2026-12-01T05:00:00Z (evidence {EV_B}); "
            "soaking for 1d, until 2026-12-02T05:00:00Z",
            retry_at=datetime(2026, 12, 2, 5, 0, tzinfo=UTC),
            facts={"prior": EV_B, "priorDecidedAt": "2026-12-01T05:00:00Z"},
        ),
    ),
    "denied-then-allowed": Row(
        STAGING_1H,
        (decision(EV_A, timedelta(hours=5), "deny"), decision(EV_B, timedelta(hours=4))),
        result(
            "pass",
            "soaked",
            f"release shop-1.4.0 was allowed in staging at 2026-12-01T06:00:00Z (evidence {EV_B}); "
            "soaked for 1h",
            facts={"prior": EV_B, "priorDecidedAt": "2026-12-01T06:00:00Z"},
        ),
    ),
    "decided-at-other-offset-reported-in-utc": Row(
        {"promotesFrom": "staging", "soak": "1h30m"},
        (
            PriorDecision(
                evidence=EV_A,
                environment="staging",
                release_id=RELEASE_ID,
                result="allow",
                decided_at=datetime(2026, 12, 1, 11, 0, tzinfo=timezone(timedelta(hours=2))),
            ),
        ),
        result(
            "pending",
            "soaking",
            f"release shop-1.4.0 was allowed in staging at 2026-12-01T09:00:00Z (evidence {EV_A}); "
            "soaking for 1h30m, until 2026-12-01T10:30:00Z",
            retry_at=datetime(2026, 12, 1, 10, 30, tzinfo=UTC),
            facts={"prior": EV_A, "priorDecidedAt": "2026-12-01T09:00:00Z"},
        ),
    ),
}


@pytest.mark.parametrize("row", list(ROWS.values()), ids=list(ROWS))
def test_environment_order(row: Row) -> None:
    assert environment_order.evaluate(context(environment(**row.env), row.history, row.now)) == row.expected


def test_history_order_does_not_matter() -> None:
    history = (decision(EV_B, timedelta(minutes=10)), decision(EV_A, timedelta(hours=2)))
    env = environment(**STAGING_1H)
    forward = environment_order.evaluate(context(env, history))
    assert environment_order.evaluate(context(env, history[::-1])) == forward


def test_naive_now_is_refused() -> None:
    ctx = context(environment(**STAGING_1H), (decision(EV_A, timedelta(hours=2)),), now=datetime(2026, 12, 1))
    with pytest.raises(ValueError, match=r"ctx\.now must be timezone-aware"):
        environment_order.evaluate(ctx)


def test_is_a_gate_plugin_registered_by_entry_point() -> None:
    assert isinstance(environment_order, Gate)
    assert isinstance(environment_order, EnvironmentOrderGate)
    manifest = environment_order.manifest
    assert (manifest.name, manifest.version, manifest.kinds, manifest.network) == (
        "environment-order",
        reconciler.__version__,
        ("gate",),
        False,
    )
    (ep,) = [ep for ep in entry_points(group="stella.gates") if ep.name == "environment-order"]
    assert ep.load() is environment_order
