"""HTTP health checks the agent runs after `up --wait` (the environment's `health: {service: {url, …}}`).

Compose's own health checks are `up --wait`'s business; these are the environment's extra checks, from
the agent's side: `GET url` until it answers `expectStatus`, every half second, for at most the check's
`timeout` (and never past the deadline of the whole rollout step). One `DeployStep` (`stage: health`)
holds every check's outcome; it fails when one check never answered as expected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import httpx

from ..models import HealthCheck
from ..protocols import DeployStep

INTERVAL = 0.5


def check(
    checks: Mapping[str, HealthCheck],
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
) -> DeployStep | None:
    """Run every check (None when there are none); `deadline` is a `clock()` value."""
    if not checks:
        return None
    started = datetime.now(UTC)
    lines: list[str] = []
    failed = 0
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        for service, spec in sorted(checks.items()):
            ok, line = _one(
                client, service, spec, min(deadline, clock() + spec.timeout_delta.total_seconds()), clock
            )
            lines.append(line)
            failed += not ok
    command = "; ".join(f"GET {spec.url} (expect {spec.expectStatus})" for _, spec in sorted(checks.items()))
    return DeployStep("health", command, 1 if failed else 0, "\n".join(lines), started, datetime.now(UTC))


def _one(
    client: httpx.Client, service: str, spec: HealthCheck, until: float, clock: Callable[[], float]
) -> tuple[bool, str]:
    last = "no answer"
    attempts = 0
    while True:
        attempts += 1
        remaining = until - clock()
        try:
            answer = client.get(spec.url, timeout=max(min(remaining, 5.0), 0.1))
            if answer.status_code == spec.expectStatus:
                return True, f"{service}: {spec.url} answered {answer.status_code}"
            last = f"answered {answer.status_code}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if clock() + INTERVAL >= until:
            return False, (
                f"{service}: {spec.url} {last}, expected {spec.expectStatus} "
                f"(gave up after {attempts} attempt(s))"
            )
        time.sleep(INTERVAL)
