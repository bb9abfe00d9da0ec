"""`stella agent`: the pull-based deployment agent of one target (DESIGN §9).

One run: push any deployment record a crashed run left staged; fetch the evidence branch; verify the
policy chain from the pinned root and take, from the policy in force, this target's environment and
agent key; take the environment's newest allowed decision and its lock (hashes checked); compare with
the sticker: nothing to do when it already runs that decision (or already failed it: a failed decision is
not retried until a newer one). With a rolling rollout, wait until the batches before this target's
have deployed the decision, and stop for good when one of them failed it (`rollout.py`). Otherwise apply
the lock through the agent plugin (pull by digest, `up`, inspect), run the environment's HTTP checks
(`health.py`), write the sticker atomically when it succeeded, and record a signed deployment record
(succeeded or failed) on the evidence branch by compare-and-swap push.

When `up` or a health check failed and `rollout.autoRollback` is on, the agent re-applies the lock of
the decision its sticker names (digests, from the branch, hashes checked) and records `rollback`: the
failed decision, why, and whether the earlier release runs again (`rolled-back`) or not (`failed`).
The failed decision stays `failed` in its own record, and is not retried on this target until a newer
decision. A release marked `rollbackSafe: false` is never rolled back from, nor to, automatically: the
failed record says a person must act. A rollback owed when the agent was killed is carried out by the
next run (`rollback.json` in the state directory).

The core holds this loop; the plugin (group `stella.agents`, e.g. `stella-docker`) holds the engine
calls. No printing: the CLI reports the `AgentRun` returned.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from .. import drift
from ..errors import InvalidInput, Transient
from ..evidence import canonical, sha256_hex
from ..ledger import DRIFT, ROLLBACK, rfc3339
from ..models import ReleaseLock
from ..protocols import AgentPlugin, DeployStep, Signer
from ..render import lock_images
from . import health, rollout
from .apply import Applied, apply
from .desired import Desired, Running, read_desired
from .mirror import Mirror
from .record import deployment_statement, push_pending, stage
from .sticker import VERSION, read_sticker, write_sticker

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0
OWED = "rollback.json"
"""A rollback the agent owes: written before it starts, removed once its record is staged."""


@dataclass(frozen=True)
class AgentOptions:
    target: str
    url: str
    state_dir: Path
    root: str
    ref: str = "refs/heads/stella/evidence"
    timeout: float | None = None
    """How long `up` and the health checks may take to see every service healthy (None: the
    environment's `rollout.healthTimeout`)."""


@dataclass
class AgentRun:
    """What one run found and did."""

    target: str
    environment: str | None = None
    decision: str | None = None
    """The decision the target should run (None: nothing allowed yet)."""
    action: str = "none"
    """`none` (already running it, or nothing to run), `deployed`, `failed`, `rolled-back` (failed, and
    the earlier release runs again), `skipped` (failed before), `waiting` (earlier batches have not
    deployed it yet), `halted` (an earlier batch failed it)."""
    result: str | None = None
    reason: str = ""
    deployment: str | None = None
    """The deployment record written by this run."""
    rollback: str | None = None
    """The rollback record written by this run."""
    rollback_result: str | None = None
    pushed: list[str] = field(default_factory=list)
    """Records staged by an earlier run that this run pushed."""
    refused: list[str] = field(default_factory=list)
    """Staged records the source's hook refused outright (kept under `refused/`, with why)."""
    unreachable: bool = False
    """The engine could not be reached: the failure is recorded, and the decision tried again next run."""
    drift: list[dict[str, object]] | None = None
    """The drift items found (None: not checked this run)."""
    drift_record: str | None = None
    """The `drift` observation recorded by this run (the drift state changed)."""
    remediation: str | None = None
    """The deployment record of a remediation (`driftPolicy: remediate`) by this run."""
    remediation_result: str | None = None
    batch: int | None = None
    batches: int | None = None


def run_once(
    options: AgentOptions,
    agents: Callable[[str], AgentPlugin],
    signer: Signer,
    signer_hint: str | None,
    environ: Mapping[str, str],
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> AgentRun:
    """One agent run (see the module docstring)."""
    options.state_dir.mkdir(parents=True, exist_ok=True)
    with _only_run(options.state_dir):
        return _run(options, agents, signer, signer_hint, environ, now)


@contextmanager
def _only_run(state_dir: Path) -> Iterator[None]:
    """Hold the state directory for this run: two agents sharing one would deploy over each other."""
    with open(state_dir / "agent.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise InvalidInput(f"{state_dir}: another agent is running with this state directory") from exc
        yield


@dataclass(frozen=True)
class _Context:
    """What every step of one run needs."""

    options: AgentOptions
    plugin: Callable[[str], AgentPlugin]
    signer: Signer
    environ: Mapping[str, str]
    now: Callable[[], datetime]
    desired: Desired
    sticker: dict[str, object] | None

    @property
    def timeout(self) -> float:
        if self.options.timeout is not None:
            return self.options.timeout
        return self.desired.environment.rollout.health_timeout.total_seconds()


def _run(
    options: AgentOptions,
    agents: Callable[[str], AgentPlugin],
    signer: Signer,
    signer_hint: str | None,
    environ: Mapping[str, str],
    now: Callable[[], datetime],
) -> AgentRun:
    mirror = Mirror(options.state_dir, options.url, options.ref)
    mirror.clear_stale_locks()
    outcome = AgentRun(options.target)
    outcome.pushed, outcome.refused = push_pending(mirror, options.state_dir)
    head = mirror.fetch()
    if head is None:
        raise InvalidInput(f"{options.url}: has no {options.ref}: nothing has been decided yet")
    sticker = read_sticker(options.state_dir)
    running = sticker.get("decision") if sticker is not None else None
    desired = read_desired(
        mirror.repo(),
        options.ref,
        head,
        options.root,
        options.target,
        running=running if isinstance(running, str) else None,
    )
    if signer_hint is not None and signer_hint not in desired.agent_keys:
        source = next(iter(desired.agent_keys.values())).source
        raise InvalidInput(
            f"the agent key (hint {signer_hint}) is not {source} of the policy in force: this agent may "
            f"not record deployments of {options.target}"
        )
    outcome.environment = desired.environment.name
    if desired.decision is None or desired.lock is None:
        outcome.reason = f"nothing allowed in {desired.environment.name} yet"
        return outcome
    outcome.decision = desired.decision.evidence
    if desired.position is not None:
        outcome.batch, outcome.batches = desired.position.batch, desired.position.batches
    context = _Context(options, agents, signer, environ, now, desired, sticker)
    owed = read_owed(options.state_dir)
    if owed is not None:  # a run killed while rolling back: finish it first
        _rollback(context, owed, outcome)
    elif sticker is not None and sticker.get("decision") == desired.decision.evidence:
        outcome.reason = "already running it"
        _check_drift(context, outcome)
    elif desired.decision.evidence in (failed := read_failed(options.state_dir)):
        outcome.action, outcome.reason = (
            "skipped",
            f"it failed here before ({failed[desired.decision.evidence]})",
        )
        _check_drift(context, outcome)
    elif desired.position is not None and desired.position.state != rollout.GO:
        outcome.action, outcome.reason = desired.position.state, desired.position.reason
        _check_drift(context, outcome)
    else:
        _deploy(context, outcome)
    pushed, refused = push_pending(mirror, options.state_dir)
    outcome.pushed += pushed
    outcome.refused += refused
    return outcome


def _check_drift(context: _Context, outcome: AgentRun) -> None:
    """Compare what runs with the lock of the decision the sticker names (one engine call); record a
    `drift` observation when the drift state changed since the last one, and with `driftPolicy:
    remediate` apply that lock again."""
    desired, state_dir = context.desired, context.options.state_dir
    running = desired.running
    if running is None:
        return
    plugin = context.plugin(desired.agent)
    started = context.now()
    try:
        engine = plugin.open(desired.target, context.environ)
        try:
            containers = engine.running(desired.target.project)
        finally:
            engine.close()
    except Transient as exc:  # nothing known about drift: said, not recorded
        outcome.unreachable = True
        outcome.reason = _also(outcome.reason, f"drift not checked: {exc}")
        return
    completed = context.now()
    items = drift.compare(desired.target.name, running.lock, containers)
    outcome.drift = [item.as_json() for item in items]
    state = drift_state(items)
    if state == read_drift(state_dir):
        return
    summary = (
        f"{len(items)} difference(s): " + ", ".join(f"{i.service or '?'} {i.kind}" for i in items)
        if items
        else "runs its lock again"
    )
    statement = canonical(
        deployment_statement(
            tenant=desired.tenant,
            target=desired.target,
            agent=plugin.manifest.name,
            decision=running.decision.evidence,
            release={"id": running.decision.release_id, "name": running.decision.release_name},
            policy={"id": desired.policy.id, "record": desired.policy_record},
            result="drifted" if items else "in-sync",
            reason=summary,
            steps=[
                DeployStep(
                    "inspect",
                    f"list the containers of project {desired.target.project}",
                    1 if items else 0,
                    "\n".join(
                        f"{i.service} {i.kind}: expected {i.expected}, actual {i.actual}" for i in items
                    ),
                    started,
                    completed,
                )
            ],
            containers=containers,
            lock=running.lock,
            images=lock_images(running.lock),
            started_at=started,
            completed_at=completed,
            previous=desired.previous_deployment,
            kind=DRIFT,
            extra={"drift": [item.as_json() for item in items]},
        )
    )
    pointer = _pointer(desired, context.sticker)
    outcome.drift_record = stage(state_dir, statement, context.signer, pointer, desired.target)
    remember_drift(state_dir, state)
    if items and desired.environment.driftPolicy == "remediate":
        remedy = replace(context, desired=replace(desired, previous_deployment=outcome.drift_record))
        _deploy(remedy, outcome, running=running, why=f"remediating drift ({summary})")


def _apply(context: _Context, lock: bytes) -> tuple[Applied, bool]:
    """Apply `lock` to the target's engine, then run the environment's HTTP checks; (how it went,
    whether the engine could not be reached at all)."""
    desired = context.desired
    plugin = context.plugin(desired.agent)
    try:
        engine = plugin.open(desired.target, context.environ)
        try:
            applied = apply(
                engine,
                project=desired.target.project,
                lock=lock,
                state_dir=context.options.state_dir,
                environment=desired.environment,
                environ=context.environ,
                timeout=context.timeout,
            )
        finally:
            engine.close()
    except Transient as exc:  # the engine is not there: recorded, and tried again next run
        return Applied(reason=str(exc)), True
    if applied.ok:
        step = health.check(desired.environment.health, time.monotonic() + context.timeout)
        if step is not None:
            applied.steps.append(step)
            if not step.ok:
                applied.ok = False
                bad = [line for line in step.output.splitlines() if "expected" in line]
                applied.reason = "health check failed: " + "; ".join(bad)
    return applied, False


def _deploy(context: _Context, outcome: AgentRun, running: Running | None = None, why: str = "") -> None:
    """Apply the lock of the decision that should run (or, to remediate drift, of `running`: the one
    the target runs), record it, and roll back when that is owed."""
    desired = context.desired
    if running is not None:
        decision, lock, release_lock = running.decision, running.lock, running.release
    else:
        assert desired.decision is not None and desired.lock is not None
        decision, lock, release_lock = desired.decision, desired.lock, desired.release
    plugin = context.plugin(desired.agent)
    started = context.now()
    applied, unreachable = _apply(context, lock)
    completed = context.now()
    result = "succeeded" if applied.ok else "failed"
    back, note = _rollback_plan(context, applied, unreachable) if running is None else (False, "")
    reason = _also(why, _also(applied.reason, note))
    release = {"id": decision.release_id, "name": decision.release_name}
    extra: dict[str, object] = {}
    if desired.environment.rollout.strategy == "rolling" and desired.position is not None:
        extra["rollout"] = {
            "strategy": "rolling",
            "batch": desired.position.batch,
            "batches": desired.position.batches,
        }
    statement = canonical(
        deployment_statement(
            tenant=desired.tenant,
            target=desired.target,
            agent=plugin.manifest.name,
            decision=decision.evidence,
            release=release,
            policy={"id": desired.policy.id, "record": desired.policy_record},
            result=result,
            reason=reason,
            steps=applied.steps,
            containers=applied.containers,
            lock=lock,
            images=lock_images(lock),
            started_at=started,
            completed_at=completed,
            previous=desired.previous_deployment,
            extra=extra,
        )
    )
    deployment = f"sha256:{sha256_hex(statement)}"
    new_sticker = (
        _sticker(desired, release_lock, decision.evidence, deployment, completed, context.sticker)
        if applied.ok
        else context.sticker
    )
    pointer = _pointer(desired, new_sticker)
    stage(context.options.state_dir, statement, context.signer, pointer, desired.target)
    if back:  # owed from here on: a run killed before the rollback record is staged finishes it
        write_owed(context.options.state_dir, decision.evidence, deployment, applied.reason)
    if applied.ok and new_sticker is not None:
        write_sticker(context.options.state_dir, new_sticker)
        remember_drift(context.options.state_dir, drift_state([]))  # what it deployed runs: in sync
    elif not unreachable and running is None:
        remember_failed(context.options.state_dir, decision.evidence, applied.reason)
    outcome.unreachable = unreachable
    if running is not None:  # remediation: the run's action stays what it was
        outcome.remediation, outcome.remediation_result = deployment, result
        return
    outcome.action = "deployed" if applied.ok else "failed"
    outcome.result, outcome.reason, outcome.deployment = result, reason, deployment
    if back:
        _rollback(context, read_owed(context.options.state_dir) or {}, outcome)


def _pointer(desired: Desired, sticker: Mapping[str, object] | None) -> bytes:
    """`targets/<env>/<target>/stella.version.json`: the sticker's bytes (a placeholder before any)."""
    return canonical(dict(sticker) if sticker is not None else {"target": desired.target.name})


def _rollback_plan(context: _Context, applied: Applied, unreachable: bool) -> tuple[bool, str]:
    """Whether to roll back after `applied`, and what the failed record says about it."""
    desired = context.desired
    if applied.ok or unreachable or not any(step.stage == "up" for step in applied.steps):
        return False, ""  # nothing changed on the target (a pull failed, or the engine is away)
    if not desired.environment.rollout.autoRollback:
        return False, "automatic rollback is off (rollout.autoRollback: false)"
    running = desired.running
    if running is None:
        return False, "no earlier release on this target to roll back to"
    name = desired.decision.release_name if desired.decision else "this release"
    if not desired.rollback_safe:
        return (
            False,
            f"not rolled back automatically: {name} is marked rollbackSafe: false; a person must act",
        )
    if not running.rollback_safe:
        return False, (
            f"not rolled back automatically: {running.decision.release_name} is marked rollbackSafe: "
            "false; a person must act"
        )
    return True, f"rolling back to {running.decision.release_name} ({running.decision.evidence})"


def _rollback(context: _Context, owed: Mapping[str, str], outcome: AgentRun) -> None:
    """Re-apply the lock of the decision the sticker names, and record `rollback`."""
    desired, state_dir = context.desired, context.options.state_dir
    running = desired.running
    failed_decision, failed_deployment = owed.get("decision"), owed.get("deployment")
    if running is None or not failed_decision or not failed_deployment:
        clear_owed(state_dir)  # nothing verifiable to go back to any more: say so, and stop owing it
        outcome.reason = (
            outcome.reason + "; " if outcome.reason else ""
        ) + "no earlier release to roll back to"
        return
    plugin = context.plugin(desired.agent)
    started = context.now()
    applied, unreachable = _apply(context, running.lock)
    if unreachable:  # still owed: the next run tries again
        outcome.unreachable = True
        outcome.reason = (
            outcome.reason + "; " if outcome.reason else ""
        ) + f"rollback not done: {applied.reason}"
        return
    completed = context.now()
    result = "rolled-back" if applied.ok else "failed"
    why = owed.get("reason", "")
    reason = (
        f"{failed_decision} failed here ({why}): {running.decision.release_name} runs again"
        if applied.ok
        else f"rolling back to {running.decision.release_name} failed too: {applied.reason}"
    )
    statement = canonical(
        deployment_statement(
            tenant=desired.tenant,
            target=desired.target,
            agent=plugin.manifest.name,
            decision=running.decision.evidence,
            release={"id": running.decision.release_id, "name": running.decision.release_name},
            policy={"id": desired.policy.id, "record": desired.policy_record},
            result=result,
            reason=reason,
            steps=applied.steps,
            containers=applied.containers,
            lock=running.lock,
            images=lock_images(running.lock),
            started_at=started,
            completed_at=completed,
            previous=failed_deployment,
            kind=ROLLBACK,
            extra={
                "rollback": {
                    "failedDecision": failed_decision,
                    "failedDeployment": failed_deployment,
                    "reason": why,
                }
            },
        )
    )
    record = f"sha256:{sha256_hex(statement)}"
    new_sticker = (
        _sticker(desired, running.release, running.decision.evidence, record, completed, context.sticker)
        if applied.ok
        else context.sticker
    )
    pointer = _pointer(desired, new_sticker)
    stage(state_dir, statement, context.signer, pointer, desired.target)
    if applied.ok and new_sticker is not None:
        write_sticker(state_dir, new_sticker)
        remember_drift(state_dir, drift_state([]))
    remember_failed(state_dir, failed_decision, why or "failed")
    clear_owed(state_dir)
    outcome.action = "rolled-back" if applied.ok else "failed"
    outcome.result = outcome.result or "failed"
    outcome.deployment = outcome.deployment or failed_deployment
    outcome.rollback, outcome.rollback_result = record, result
    outcome.reason = _also(outcome.reason or why, reason)


def _also(reason: str, more: str) -> str:
    """`reason; more`, either of them possibly empty."""
    return f"{reason}; {more}" if reason and more else reason or more


def _sticker(
    desired: Desired,
    release: ReleaseLock | None,
    decision: str,
    deployment: str,
    at: datetime,
    before: Mapping[str, object] | None,
) -> dict[str, object]:
    return {
        "version": VERSION,
        "environment": desired.environment.name,
        "target": desired.target.name,
        "release": {
            "id": release.id if release else None,
            "name": release.name if release else None,
            "components": _components(release),
        },
        "decision": decision,
        "deployment": deployment,
        "deployedAt": rfc3339(at),
        "previous": _previous(before),
    }


def _components(release: ReleaseLock | None) -> dict[str, dict[str, str]]:
    """The release's components as the sticker lists them: name -> pinned image and digest."""
    if release is None:
        return {}
    return {
        name: {"image": component.pinned, "digest": component.digest}
        for name, component in sorted(release.components.items())
    }


def _previous(sticker: Mapping[str, object] | None) -> dict[str, object] | None:
    if sticker is None:
        return None
    release = sticker.get("release")
    return {
        "release": release.get("id") if isinstance(release, dict) else None,
        "decision": sticker.get("decision"),
    }


FAILED = "failed.json"


def read_failed(state_dir: Path) -> dict[str, str]:
    """Decisions that failed on this target, with why (not retried until a newer decision)."""
    try:
        value = json.loads((state_dir / FAILED).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def remember_failed(state_dir: Path, decision: str, reason: str) -> None:
    failed = read_failed(state_dir)
    failed[decision] = reason
    _write_json(state_dir / FAILED, failed)


def read_owed(state_dir: Path) -> dict[str, str] | None:
    """The rollback a killed run owes (`{decision, deployment, reason}`), if any."""
    try:
        value = json.loads((state_dir / OWED).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def write_owed(state_dir: Path, decision: str, deployment: str, reason: str) -> None:
    _write_json(state_dir / OWED, {"decision": decision, "deployment": deployment, "reason": reason})


def clear_owed(state_dir: Path) -> None:
    (state_dir / OWED).unlink(missing_ok=True)


DRIFT_STATE = "drift.json"


def drift_state(items: Sequence[drift.DriftItem]) -> str:
    """The identity of a drift state: the hash of its items (of none: in sync)."""
    return sha256_hex(canonical([item.as_json() for item in items]))


def read_drift(state_dir: Path) -> str:
    """The drift state last recorded (in sync when none was)."""
    try:
        value = json.loads((state_dir / DRIFT_STATE).read_text())
    except (OSError, ValueError):
        return drift_state([])
    state = value.get("state") if isinstance(value, dict) else None
    return state if isinstance(state, str) else drift_state([])


def remember_drift(state_dir: Path, state: str) -> None:
    _write_json(state_dir / DRIFT_STATE, {"state": state})


def _write_json(path: Path, value: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, sort_keys=True))
    os.replace(tmp, path)
