"""The `approvals` core gate.

An environment without an `approvals` policy (or with `required: 0`) passes. Approval checking from
signed commits is not implemented yet: an environment that requires approvals stays pending, with a
reason that says so (never an implicit allow).
"""

from __future__ import annotations

from .. import __version__
from ..protocols import GateContext, GateResult, PluginManifest


class ApprovalsGate:
    manifest = PluginManifest(
        name="approvals",
        version=__version__,
        kinds=("gate",),
        network=False,
        description="N-of-M approvals from signed commits, with separation of duties",
    )

    def evaluate(self, ctx: GateContext) -> GateResult:
        policy = ctx.environment.approvals
        if policy is None or policy.required == 0:
            return GateResult("approvals", "pass", "no-approvals-required", "no approvals required")
        return GateResult(
            "approvals",
            "pending",
            "approvals-unsupported",
            f"{ctx.environment.name} requires {policy.required} approval(s); checking signed approvals "
            "is not available in this version, so the promotion waits",
        )


approvals = ApprovalsGate()
