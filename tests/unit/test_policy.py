"""Aggregation is fail-closed, and a gate that raises, hangs or misbehaves is an error result."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from reconciler.models import Environment, Promotion, ReleaseLock
from reconciler.policy import PlannedGate, aggregate, decide, run_gate
from reconciler.protocols import Actor, GateContext, GateResult, PluginManifest

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
EARLIER = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
D = "sha256:" + "1" * 64


def _ctx() -> GateContext:
    return GateContext(
        now=NOW,
        promotion_id="app-1--dev",
        promotion=Promotion.model_validate(
            {"apiVersion": "stella/v1", "kind": "Promotion", "release": "app-1", "environment": "dev"}
        ),
        release=ReleaseLock.model_validate(
            {
                "name": "app-1",
                "id": D,
                "components": {"web": {"image": "r.example.com/web", "tag": "1", "digest": D}},
            }
        ),
        environment=Environment.model_validate(
            {"apiVersion": "stella/v1", "kind": "Environment", "name": "dev"}
        ),
        options={},
        requester=Actor(None),
    )


def r(status: str, reason: str = "x", retry_at: datetime | None = None) -> GateResult:
    return GateResult("g", status, reason, "m", retry_at)  # type: ignore[arg-type]


AGGREGATION = [
    pytest.param([], "allow", None, id="no-gates"),
    pytest.param([r("pass"), r("pass")], "allow", None, id="all-pass"),
    pytest.param([r("pass"), r("fail")], "deny", None, id="one-fail"),
    pytest.param([r("fail"), r("pending", retry_at=LATER)], "deny", None, id="fail-beats-pending"),
    pytest.param([r("fail"), r("error")], "deny", None, id="fail-beats-error"),
    pytest.param([r("pass"), r("error")], "pending", None, id="error-is-pending"),
    pytest.param(
        [r("pending", retry_at=EARLIER), r("pending", retry_at=LATER)], "pending", LATER, id="latest-retry"
    ),
    pytest.param([r("pending"), r("pending", retry_at=LATER)], "pending", LATER, id="retry-when-known"),
]


@pytest.mark.parametrize(("results", "expected", "retry_at"), AGGREGATION)
def test_aggregate(results: list[GateResult], expected: str, retry_at: datetime | None) -> None:
    decision = aggregate(results)
    assert (decision.result, decision.retry_at, decision.gates) == (expected, retry_at, tuple(results))


class _Gate:
    manifest = PluginManifest("t", "1", ("gate",), network=False)

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.release = threading.Event()

    def evaluate(self, ctx: GateContext) -> GateResult:
        if self.behaviour == "raise":
            raise RuntimeError("boom")
        if self.behaviour == "exit":
            raise SystemExit(3)
        if self.behaviour == "hang":
            self.release.wait(5)
        if self.behaviour == "garbage":
            return "yes"  # type: ignore[return-value]
        return GateResult("other-name", "pass", "ok", f"options {dict(ctx.options)}")


MISBEHAVING = [
    pytest.param("raise", ("error", "gate-raised", "gate raised RuntimeError: boom"), id="raises"),
    pytest.param("hang", ("error", "gate-timeout", "gate did not answer within 0.2s"), id="hangs"),
    pytest.param("garbage", ("error", "gate-bad-result", "gate returned 'yes'"), id="bad-result"),
    pytest.param("ok", ("pass", "ok", "options {'max': 1}"), id="answers"),
]


@pytest.mark.parametrize(("behaviour", "expected"), MISBEHAVING)
def test_run_gate_never_raises(behaviour: str, expected: tuple[str, str, str]) -> None:
    gate = _Gate(behaviour)
    name = f"t-{behaviour}"  # a gate that hung is not called again while its call runs: one name each
    try:
        result = run_gate(PlannedGate(name, gate, {"max": 1}), _ctx(), timeout=0.2)
    finally:
        gate.release.set()
    assert (result.gate, result.status, result.reason, result.message) == (name, *expected)


def test_missing_plugin_keeps_the_promotion_pending_and_others_run() -> None:
    plan = [
        PlannedGate("vulnerability", None, {}, unavailable="gate plugin 'vulnerability' is not installed"),
        PlannedGate("t", _Gate("ok"), {}),
    ]
    decision = decide(_ctx(), plan)
    assert decision.result == "pending"
    assert [(g.gate, g.status, g.reason) for g in decision.gates] == [
        ("vulnerability", "error", "gate-unavailable"),
        ("t", "pass", "ok"),
    ]
    assert decision.reasons == ["t/ok", "vulnerability/gate-unavailable"]


def test_a_hung_gate_does_not_block_the_next_one() -> None:
    hung = _Gate("hang")
    try:
        assert run_gate(PlannedGate("hung", hung, {}), _ctx(), timeout=0.1).reason == "gate-timeout"
        assert run_gate(PlannedGate("t", _Gate("ok"), {}), _ctx(), timeout=1).status == "pass"
    finally:
        hung.release.set()


def test_a_hung_gate_costs_one_thread_over_a_thousand_passes() -> None:
    """While its abandoned call still runs, the gate is not called again: no thread per pass."""
    hung = _Gate("hang")
    before = threading.active_count()
    try:
        results = [run_gate(PlannedGate("stuck", hung, {}), _ctx(), timeout=0.01) for _ in range(1000)]
        assert {(r.status, r.reason) for r in results} == {("error", "gate-timeout")}
        assert results[-1].message == "gate is still inside a call that did not answer within 0.01s"
        assert threading.active_count() <= before + 2  # the stuck worker, and the fresh one
    finally:
        hung.release.set()
    for _ in range(200):  # once the call returns, its thread ends and the gate is called again
        if run_gate(PlannedGate("stuck", _Gate("ok"), {}), _ctx(), timeout=1).status == "pass":
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the gate was never called again")


def test_a_gate_that_calls_sys_exit_is_an_error() -> None:
    result = run_gate(PlannedGate("exits", _Gate("exit"), {}), _ctx(), timeout=1)
    assert (result.status, result.reason, result.message) == (
        "error",
        "gate-raised",
        "gate raised SystemExit: 3",
    )
