"""`stella agent`: the pull-based deployment agent of one target (DESIGN §9).

One run: push any deployment record a crashed run left staged; fetch the evidence branch; verify the
policy chain from the pinned root and take, from the policy in force, this target's environment and
agent key; take the environment's newest allowed decision and its lock (hashes checked); compare with
the sticker: nothing to do when it already runs that decision (or already failed it: a failed decision is
not retried until a newer one). Otherwise apply the lock through the agent plugin (pull by digest, `up`,
inspect), write the sticker atomically when it succeeded, and record a signed deployment record
(succeeded or failed) on the evidence branch by compare-and-swap push.

The core holds this loop; the plugin (group `stella.agents`, e.g. `stella-docker`) holds the engine
calls. No printing: the CLI reports the `AgentRun` returned.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..errors import InvalidInput, Transient
from ..evidence import canonical, sha256_hex
from ..ledger import rfc3339
from ..protocols import AgentPlugin, Signer
from ..render import lock_images
from .apply import Applied, apply
from .desired import Desired, read_desired
from .mirror import Mirror
from .record import deployment_statement, push_pending, stage
from .sticker import VERSION, read_sticker, write_sticker

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class AgentOptions:
    target: str
    url: str
    state_dir: Path
    root: str
    ref: str = "refs/heads/stella/evidence"
    timeout: float = DEFAULT_TIMEOUT
    """How long `up` may wait for the services to be running and healthy (the environment's
    `rollout.healthTimeout` when it says, else this)."""


@dataclass
class AgentRun:
    """What one run found and did."""

    target: str
    environment: str | None = None
    decision: str | None = None
    """The decision the target should run (None: nothing allowed yet)."""
    action: str = "none"
    """`none` (already running it, or nothing to run), `deployed`, `failed`, `skipped` (failed before)."""
    result: str | None = None
    reason: str = ""
    deployment: str | None = None
    """The deployment record written by this run."""
    pushed: list[str] = field(default_factory=list)
    """Records staged by an earlier run that this run pushed."""
    refused: list[str] = field(default_factory=list)
    """Staged records the source's hook refused outright (kept under `refused/`, with why)."""
    unreachable: bool = False
    """The engine could not be reached: the failure is recorded, and the decision tried again next run."""


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
    desired = read_desired(mirror.repo(), options.ref, head, options.root, options.target)
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
    sticker = read_sticker(options.state_dir)
    if sticker is not None and sticker.get("decision") == desired.decision.evidence:
        outcome.reason = "already running it"
        return outcome
    failed = read_failed(options.state_dir)
    if desired.decision.evidence in failed:
        outcome.action, outcome.reason = (
            "skipped",
            f"it failed here before ({failed[desired.decision.evidence]})",
        )
        return outcome
    _deploy(options, agents(desired.agent), signer, environ, now, desired, sticker, outcome)
    pushed, refused = push_pending(mirror, options.state_dir)
    outcome.pushed += pushed
    outcome.refused += refused
    return outcome


def _deploy(
    options: AgentOptions,
    plugin: AgentPlugin,
    signer: Signer,
    environ: Mapping[str, str],
    now: Callable[[], datetime],
    desired: Desired,
    sticker: dict[str, object] | None,
    outcome: AgentRun,
) -> None:
    assert desired.decision is not None and desired.lock is not None
    decision, lock = desired.decision, desired.lock
    started = now()
    unreachable = False
    try:
        engine = plugin.open(desired.target, environ)
        try:
            applied = apply(
                engine,
                project=desired.target.project,
                lock=lock,
                state_dir=options.state_dir,
                environment=desired.environment,
                environ=environ,
                timeout=options.timeout,
            )
        finally:
            engine.close()
    except Transient as exc:  # the engine is not there: recorded, and tried again next run
        applied, unreachable = Applied(reason=str(exc)), True
    completed = now()
    result = "succeeded" if applied.ok else "failed"
    release = {"id": decision.release_id, "name": decision.release_name}
    statement = canonical(
        deployment_statement(
            tenant=desired.tenant,
            target=desired.target,
            agent=plugin.manifest.name,
            decision=decision.evidence,
            release=release,
            policy={"id": desired.policy.id, "record": desired.policy_record},
            result=result,
            reason=applied.reason,
            steps=applied.steps,
            containers=applied.containers,
            lock=lock,
            images=lock_images(lock),
            started_at=started,
            completed_at=completed,
            previous=desired.previous_deployment,
        )
    )
    deployment = f"sha256:{sha256_hex(statement)}"
    new_sticker = (
        {
            "version": VERSION,
            "environment": desired.environment.name,
            "target": desired.target.name,
            "release": {**release, "components": _components(desired)},
            "decision": decision.evidence,
            "deployment": deployment,
            "deployedAt": rfc3339(completed),
            "previous": _previous(sticker),
        }
        if applied.ok
        else sticker
    )
    pointer = (
        canonical(new_sticker) if new_sticker is not None else canonical({"target": desired.target.name})
    )
    stage(options.state_dir, statement, signer, pointer, desired.target)
    if applied.ok and new_sticker is not None:
        write_sticker(options.state_dir, new_sticker)
    elif not unreachable:
        remember_failed(options.state_dir, decision.evidence, applied.reason)
    outcome.unreachable = unreachable
    outcome.action = "deployed" if applied.ok else "failed"
    outcome.result, outcome.reason, outcome.deployment = result, applied.reason, deployment


def _components(desired: Desired) -> dict[str, dict[str, str]]:
    """The release's components as the sticker lists them: name -> pinned image and digest."""
    if desired.release is None:
        return {}
    return {
        name: {"image": component.pinned, "digest": component.digest}
        for name, component in sorted(desired.release.components.items())
    }


def _nothing_deployed(desired: Desired) -> dict[str, object]:
    """The sticker of a target that never ran a release (what its pointer says after a failed first)."""
    return {
        "version": VERSION,
        "environment": desired.environment.name,
        "target": desired.target.name,
        "release": None,
        "decision": None,
        "deployment": None,
        "deployedAt": None,
        "previous": None,
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
    tmp = state_dir / (FAILED + ".tmp")
    tmp.write_text(json.dumps(failed, sort_keys=True))
    os.replace(tmp, state_dir / FAILED)
