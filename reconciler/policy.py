"""Decide a promotion from its inputs: run the gates, aggregate fail-closed.

PURE in what it decides: the inputs (including the time) come in as values, the decision goes out as a
value; no clock, disk, network or Git. Gates run one at a time in the order the core fixes (core gates,
then the environment's plugin gates as listed), each on a worker thread with a timeout, so a gate that
raises or hangs becomes an `error` result instead of breaking the pass.

Aggregation: any `fail` -> deny; otherwise any `error` or `pending` -> pending; all `pass` -> allow.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from .protocols import Gate, GateContext, GateResult

log = logging.getLogger(__name__)

CORE_GATES = ("environment-order", "freeze-window", "approvals")
"""Evaluated first, in this order, for every environment."""

GATE_TIMEOUT = 10.0

Result = Literal["allow", "deny", "pending"]


@dataclass(frozen=True)
class PlannedGate:
    """One gate to run: its name, the plugin object (None when unavailable, with why) and options."""

    name: str
    gate: Gate | None
    options: dict[str, object]
    unavailable: str = ""
    version: str = ""


@dataclass(frozen=True)
class Decision:
    result: Result
    gates: tuple[GateResult, ...]
    retry_at: datetime | None

    @property
    def reasons(self) -> list[str]:
        """`gate/reason` of every gate, sorted: the stable summary of why."""
        return sorted(f"{g.gate}/{g.reason}" for g in self.gates)

    @property
    def blocking(self) -> list[GateResult]:
        return [g for g in self.gates if g.status != "pass"]


def aggregate(results: Sequence[GateResult]) -> Decision:
    """Fail-closed aggregation of gate results (no gates at all is an allow)."""
    statuses = {r.status for r in results}
    result: Result
    if "fail" in statuses:
        result = "deny"
    elif statuses & {"error", "pending"}:
        result = "pending"
    else:
        result = "allow"
    waits = [r.retry_at for r in results if r.status == "pending" and r.retry_at is not None]
    retry_at = max(waits) if result == "pending" and waits else None
    return Decision(result=result, gates=tuple(results), retry_at=retry_at)


def run_gate(planned: PlannedGate, ctx: GateContext, timeout: float = GATE_TIMEOUT) -> GateResult:
    """Evaluate one gate; never raises. Exceptions, hangs and bad return values are `error` results."""
    if planned.gate is None:
        return GateResult(planned.name, "error", "gate-unavailable", planned.unavailable)
    gate_ctx = replace(ctx, options=dict(planned.options))
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = planned.gate.evaluate(gate_ctx)  # type: ignore[union-attr]
        except Exception as exc:  # a failing plugin must not crash the core
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"gate-{planned.name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        log.warning("gate %s did not answer within %.1fs", planned.name, timeout)
        return GateResult(planned.name, "error", "gate-timeout", f"gate did not answer within {timeout:g}s")
    if "error" in box:
        exc = box["error"]
        log.warning("gate %s raised %r", planned.name, exc)
        return GateResult(planned.name, "error", "gate-raised", f"gate raised {type(exc).__name__}: {exc}")
    result = box.get("result")
    if not isinstance(result, GateResult) or result.status not in ("pass", "fail", "pending", "error"):
        return GateResult(planned.name, "error", "gate-bad-result", f"gate returned {result!r}")
    if result.gate != planned.name:
        result = replace(result, gate=planned.name)
    return result


def decide(ctx: GateContext, plan: Sequence[PlannedGate], timeout: float = GATE_TIMEOUT) -> Decision:
    """Run every planned gate in order and aggregate. Every gate runs (so `why` can show them all)."""
    return aggregate([run_gate(planned, ctx, timeout) for planned in plan])
