"""Decide a promotion from its inputs: run the gates, aggregate fail-closed.

PURE in what it decides: the inputs (including the time) come in as values, the decision goes out as a
value; no clock, disk, network or Git. Gates run one at a time in the order the core fixes (core gates,
then the environment's plugin gates as listed), each on a worker thread with a timeout, so a gate that
raises or hangs becomes an `error` result instead of breaking the pass.

Aggregation: any `fail` -> deny; otherwise any `error` or `pending` -> pending; all `pass` -> allow.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from .protocols import Gate, GateContext, GateResult

log = logging.getLogger(__name__)

CORE_GATES = ("environment-order", "freeze-window", "approvals", "quota")
"""Evaluated first, in this order, for every environment."""


def _timeout_setting(default: float = 10.0) -> float:
    """`STELLA_GATE_TIMEOUT` in seconds (read once, at import); `default` when unset or not positive."""
    try:
        value = float(os.environ.get("STELLA_GATE_TIMEOUT", default))
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default


GATE_TIMEOUT = _timeout_setting()
"""How long one gate may take before it is an `error` result (`gate-timeout`)."""

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


class _Worker:
    """One daemon thread that runs gate calls in turn, so that a call can be abandoned on timeout.

    A gate that hangs keeps its thread (Python cannot stop it); the thread is then abandoned, ends as
    soon as that call returns, and the next call gets a fresh worker. While a gate's abandoned call is
    still running, that gate is not called again (`_hung`): a gate that hangs costs one thread, not one
    per pass. Starting a thread per call costs more than most gates take, hence one worker reused while
    gates answer in time.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], queue.SimpleQueue[tuple[bool, object]]]]
        self._jobs = queue.SimpleQueue()
        self.abandoned = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="stella-gate", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.abandoned.is_set():
            job, answer = self._jobs.get()
            try:
                answer.put((True, job()))
            except (
                BaseException
            ) as exc:  # a failing plugin (even one calling sys.exit) must not crash the core
                answer.put((False, exc))

    def call(self, job: Callable[[], object], timeout: float) -> tuple[bool, object]:
        """(True, value) or (False, exception); raises queue.Empty when `timeout` passes first."""
        answer: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()
        self._jobs.put((job, answer))
        return answer.get(timeout=timeout)


_worker_lock = threading.Lock()
_worker: _Worker | None = None
_hung: dict[str, _Worker] = {}
"""Gate name -> the abandoned worker still inside that gate's call."""


def _call(name: str, job: Callable[[], object], timeout: float) -> tuple[bool, object]:
    global _worker
    with _worker_lock:
        worker = _worker = _worker or _Worker()
    try:
        return worker.call(job, timeout)
    except queue.Empty:
        with _worker_lock:
            if _worker is worker:
                _worker = None  # that thread is stuck in the gate: leave it, use a new one
            worker.abandoned.set()
            _hung[name] = worker
        raise


def _still_hung(name: str) -> bool:
    with _worker_lock:
        worker = _hung.get(name)
        if worker is not None and not worker.thread.is_alive():
            del _hung[name]
            worker = None
    return worker is not None


def run_gate(planned: PlannedGate, ctx: GateContext, timeout: float = GATE_TIMEOUT) -> GateResult:
    """Evaluate one gate; never raises. Exceptions, hangs and bad return values are `error` results."""
    gate = planned.gate
    if gate is None:
        return GateResult(planned.name, "error", "gate-unavailable", planned.unavailable)
    gate_ctx = replace(ctx, options=dict(planned.options))
    if _still_hung(planned.name):
        message = f"gate is still inside a call that did not answer within {timeout:g}s"
        return GateResult(planned.name, "error", "gate-timeout", message)
    try:
        ok, value = _call(planned.name, lambda: gate.evaluate(gate_ctx), timeout)
    except queue.Empty:
        log.warning("gate %s did not answer within %.1fs", planned.name, timeout)
        return GateResult(planned.name, "error", "gate-timeout", f"gate did not answer within {timeout:g}s")
    if not ok:
        log.warning("gate %s raised %r", planned.name, value)
        message = f"gate raised {type(value).__name__}: {value}"
        return GateResult(planned.name, "error", "gate-raised", message)
    result = value
    if not isinstance(result, GateResult) or result.status not in ("pass", "fail", "pending", "error"):
        return GateResult(planned.name, "error", "gate-bad-result", f"gate returned {result!r}")
    if result.gate != planned.name:
        result = replace(result, gate=planned.name)
    return result


def decide(ctx: GateContext, plan: Sequence[PlannedGate], timeout: float = GATE_TIMEOUT) -> Decision:
    """Run every planned gate in order and aggregate. Every gate runs (so `why` can show them all)."""
    return aggregate([run_gate(planned, ctx, timeout) for planned in plan])
