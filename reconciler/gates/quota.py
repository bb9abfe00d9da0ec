"""The `quota` core gate: deployments per day, against `limits.deploymentsPerDay` in stella.yaml.

PURE: the core hands in the limit and today's usage as the gate's options (so they are recorded in the
decision's inputs and replay sees the same numbers). Over the hard limit the promotion waits until the
next UTC day; over the soft threshold it passes with a warning. No limit set: pass.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ..protocols import GateContext, GateResult, PluginManifest
from ..version import __version__
from . import rfc3339

GATE = "quota"


class QuotaGate:
    manifest = PluginManifest(
        name=GATE,
        version=__version__,
        kinds=("gate",),
        network=False,
        description="deployments per day (stella.yaml limits.deploymentsPerDay)",
    )

    def evaluate(self, ctx: GateContext) -> GateResult:
        limit = ctx.options.get("deploymentsPerDay")
        used = int(ctx.options.get("deploymentsToday", 0))
        if not isinstance(limit, dict):
            return GateResult(GATE, "pass", "no-limit", "no deployments-per-day limit")
        hard, soft = int(limit["hard"]), limit.get("soft")
        facts = {"deploymentsToday": used, "hard": hard, "soft": soft}
        if used >= hard:
            day = ctx.now.replace(hour=0, minute=0, second=0, microsecond=0)
            resets = day + timedelta(days=1)
            return GateResult(
                GATE,
                "pending",
                "quota-exceeded",
                f"limits.deploymentsPerDay: {used} of {hard} used today (UTC); waits until {rfc3339(resets)}",
                retry_at=resets,
                facts=facts,
            )
        if soft is not None and used >= int(soft):
            return GateResult(
                GATE,
                "pass",
                "quota-soft-limit",
                f"warning: limits.deploymentsPerDay: {used} of {hard} used today, "
                f"over the soft limit of {soft}",
                facts=facts,
            )
        return GateResult(
            GATE, "pass", "within-quota", f"{used} of {hard} deployments used today", facts=facts
        )


def day_start(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


quota = QuotaGate()
