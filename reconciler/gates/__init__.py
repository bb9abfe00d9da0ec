"""The core gates: environment order (with soak), freeze windows, approvals and quotas.

They are plugins like any other: the core distribution registers each one through the `stella.gates`
entry point group (`environment-order`, `freeze-window`, `approvals`, `quota`), so that they are found,
checked and run through the same path as third-party gates. Each is a `Gate` (see `protocols.py`) with a
manifest and `evaluate(ctx) -> GateResult`.

Gates are PURE: they judge the values in a `GateContext` and return a value. The time is `ctx.now`
(timezone-aware); gates never read the clock, the disk, the network or Git, and never print.
This package re-exports what the gates share: `as_utc` and `rfc3339` (from `reconciler.timefmt`) and
`validate_cron` (from `reconciler.cron`, where the models take it from). It must not import the gate
modules (import a gate from its own module), so that importing these helpers stays cheap.
"""

from __future__ import annotations

from ..cron import validate_cron
from ..timefmt import as_utc, rfc3339

__all__ = ["as_utc", "rfc3339", "validate_cron"]
