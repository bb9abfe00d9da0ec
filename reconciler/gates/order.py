"""The `environment-order` gate: a release reaches an environment only through the one before it.

An environment with `promotesFrom: staging` accepts a release only after that same release (same
release id, that is the same digests) was allowed in `staging`, and, with `soak: 1h`, at least that long
ago. The earliest `allow` counts. A `deny` in the prior environment is no allow: the gate stays pending
(a new promotion there may still be allowed), and says so.

A rollback (a promotion with `rollback: true`, `stella rollback`) goes back to a release this
environment ran before: it passes when the same release id was allowed in THIS environment earlier (its
own allow counts instead of `promotesFrom` and `soak`), and fails otherwise, so that a hand-written
rollback cannot carry a release the environment never had past the prior environment's checks.

PURE: it reads `ctx.promotion`, `ctx.environment`, `ctx.release`, `ctx.history` and `ctx.now`; no
clock, disk, network or Git. Reason codes (stable): `no-prior-environment`, `soaked`,
`allowed-here-before` (pass); `not-in-prior-environment`, `soaking` (pending); `never-allowed-here` (fail).
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.protocols import GateContext, GateResult, PluginManifest, PriorDecision
from reconciler.version import __version__

from . import as_utc, rfc3339

__all__ = ["GATE", "EnvironmentOrderGate", "environment_order"]

GATE = "environment-order"


class EnvironmentOrderGate:
    """Pending until the release was allowed in `promotesFrom` and has soaked there for `soak`; for a
    rollback, passes on an earlier allow in this environment and fails without one."""

    manifest = PluginManifest(
        name=GATE,
        version=__version__,
        kinds=("gate",),
        network=False,
        description="a release must be allowed in the prior environment (promotesFrom) and soak there; "
        "a rollback, in this environment before",
    )

    def evaluate(self, ctx: GateContext) -> GateResult:
        if ctx.promotion.rollback:
            return _rollback(ctx)
        env = ctx.environment
        prior = env.promotesFrom
        if prior is None:
            return GateResult(
                GATE,
                "pass",
                "no-prior-environment",
                f"{env.name} has no prior environment (no promotesFrom)",
            )
        now = as_utc(ctx.now, "ctx.now")
        release = ctx.release
        mine = [d for d in ctx.history if d.environment == prior and d.release_id == release.id]
        allows = _by_time(d for d in mine if d.result == "allow")
        if not allows:
            denies = _by_time(d for d in mine if d.result == "deny")
            if denies:
                last = denies[-1]
                return GateResult(
                    GATE,
                    "pending",
                    "not-in-prior-environment",
                    f"release {release.name} was denied in {prior} at {rfc3339(last.decided_at)} "
                    f"(evidence {last.evidence}) and has not been allowed there; "
                    f"{env.name} promotes from {prior}",
                    facts={"priorDenied": last.evidence, "priorDecidedAt": rfc3339(last.decided_at)},
                )
            return GateResult(
                GATE,
                "pending",
                "not-in-prior-environment",
                f"release {release.name} has not been allowed in {prior} yet; "
                f"{env.name} promotes from {prior}",
            )
        first = allows[0]
        decided = as_utc(first.decided_at, f"decided_at of {first.evidence}")
        facts = {"prior": first.evidence, "priorDecidedAt": rfc3339(decided)}
        soak = env.soak_time
        soaked_at = decided + soak
        if now < soaked_at:
            return GateResult(
                GATE,
                "pending",
                "soaking",
                f"release {release.name} was allowed in {prior} at {rfc3339(decided)} "
                f"(evidence {first.evidence}); soaking for {env.soak or '0s'}, until {rfc3339(soaked_at)}",
                retry_at=soaked_at,
                facts=facts,
            )
        how = f"soaked for {env.soak}" if soak else "no soak required"
        return GateResult(
            GATE,
            "pass",
            "soaked",
            f"release {release.name} was allowed in {prior} at {rfc3339(decided)} "
            f"(evidence {first.evidence}); {how}",
            facts=facts,
        )


def _rollback(ctx: GateContext) -> GateResult:
    """A rollback passes on an earlier allow of the same release id in this very environment."""
    env = ctx.environment
    release = ctx.release
    here = [d for d in ctx.history if d.environment == env.name and d.release_id == release.id]
    allows = _by_time(d for d in here if d.result == "allow")
    if not allows:
        return GateResult(
            GATE,
            "fail",
            "never-allowed-here",
            f"rollback: release {release.name} ({release.id}) was never allowed in {env.name}; "
            f"a rollback goes back to a release {env.name} ran before",
            facts={"rollback": True},
        )
    last = allows[-1]
    decided = rfc3339(as_utc(last.decided_at, f"decided_at of {last.evidence}"))
    return GateResult(
        GATE,
        "pass",
        "allowed-here-before",
        f"rollback: release {release.name} was allowed in {env.name} at {decided} "
        f"(evidence {last.evidence}); its own earlier allow counts instead of promotesFrom and soak",
        facts={"rollback": True, "allowedHere": last.evidence, "allowedAt": decided},
    )


def _by_time(decisions: Iterable[PriorDecision]) -> list[PriorDecision]:
    """Oldest first; ties broken by evidence id so that the order never depends on the input's."""
    return sorted(decisions, key=lambda d: (as_utc(d.decided_at, f"decided_at of {d.evidence}"), d.evidence))


environment_order = EnvironmentOrderGate()
"""The entry point object (`stella.gates`: `environment-order`)."""
