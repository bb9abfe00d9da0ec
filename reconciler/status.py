"""`stella status`: per target, what should run, what its sticker says, and its last deployment.

Read from the evidence branch only, and only as far as it verifies: the index of `chain.open_evidence`
holds the records that verify under the policy they name. For each environment of the ratified policy
(before any genesis: of the branch, with nothing to run) and each of its targets:

- `should_run`: the environment's newest allowed decision (`EvidenceIndex.current`), never the unsigned
  pointer file;
- `sticker`: `targets/<env>/<target>/stella.version.json`, what the agent says the target runs. The file
  is not signed, so it is believed only when the deployment record it names is indexed (it verifies), is
  of this target's chain, carried out the decision the sticker names, and succeeded;
- `last`: the newest deployment or rollback record of the target's chain (`@target:<env>/<target>`),
  and `drift`: the newest drift observation the agent made since (the engine's state, as the agent
  saw it when it changed);
- `state` (`target_state`): `in-sync`, `drifted` (in sync by its records, but the agent's newest
  observation says what runs differs from the lock), `pending`, `waiting` (a rolling rollout's earlier
  batches have not deployed it yet), `halted` (an earlier batch failed it), `failed`, `rolled-back` (it
  failed here, and the release before runs again), `never` or `unknown`;
- per environment, the rollout of what should run (`rollout`): its strategy, and whether it is
  complete, in progress or halted (where, and why).

Must not: print, write (beyond the evidence index cache `open_evidence` keeps), or reach the network or
an engine: what really runs on a host (drift, DESIGN §9) is not this module's business.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .errors import InvalidInput
from .ledger import DEPLOYMENT, DRIFT, ROLLBACK, target_chain, target_pointer_path
from .timefmt import evidence_time

if TYPE_CHECKING:
    from .history import EvidenceIndex, Record
    from .models import Environment
    from .repo import GitTree, Repo

State = Literal[
    "in-sync", "drifted", "pending", "waiting", "halted", "failed", "rolled-back", "never", "unknown"
]
STATES: tuple[State, ...] = (
    "in-sync",
    "drifted",
    "pending",
    "waiting",
    "halted",
    "failed",
    "rolled-back",
    "never",
    "unknown",
)
OK_STATES: tuple[State, ...] = ("in-sync", "never")
"""States that need nothing done: running what should run, or nothing allowed (and nothing deployed)."""


@dataclass(frozen=True)
class Sticker:
    """A target's sticker as mirrored on the evidence branch, and whether it is believed."""

    decision: str | None
    deployment: str | None
    release: dict[str, Any] | None
    """`{"id", "name"}` of the release it says runs (components left out)."""
    deployed_at: str | None
    verified: bool
    problem: str | None = None
    """Why it is not believed (None when it is)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "deployment": self.deployment,
            "release": self.release,
            "deployedAt": self.deployed_at,
            "verified": self.verified,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class TargetStatus:
    name: str
    project: str
    agent: str
    state: State
    sticker: Sticker | None
    last: Record | None
    """The head of the target's chain of deployment records (None: none yet)."""
    reason: str
    """The state in a few words."""
    drift: Record | None = None
    """The newest drift observation since the last deployment (None: none)."""

    def as_json(self) -> dict[str, Any]:
        last, drift = self.last, self.drift
        return {
            "drift": (
                {
                    "evidence": drift.evidence,
                    "result": drift.result,
                    "observedAt": evidence_time(drift.decided_at),
                }
                if drift is not None
                else None
            ),
            "name": self.name,
            "project": self.project,
            "agent": self.agent,
            "state": self.state,
            "reason": self.reason,
            "sticker": self.sticker.as_json() if self.sticker is not None else None,
            "lastDeployment": (
                {
                    "evidence": last.evidence,
                    "type": last.record_type,
                    "result": last.result,
                    "decision": last.source,
                    "release": {"id": last.release_id, "name": last.release_name},
                    "completedAt": evidence_time(last.decided_at),
                }
                if last is not None
                else None
            ),
        }


@dataclass(frozen=True)
class RolloutStatus:
    """How far what should run has reached the environment's targets."""

    strategy: str
    batch_size: int
    state: Literal["complete", "in-progress", "halted", "none"]
    reason: str
    halted_at: str | None = None
    """The target whose failure halted the rollout."""

    def as_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "batchSize": self.batch_size,
            "state": self.state,
            "reason": self.reason,
            "haltedAt": self.halted_at,
        }


@dataclass(frozen=True)
class EnvironmentStatus:
    name: str
    should_run: Record | None
    targets: list[TargetStatus]
    rollout: RolloutStatus | None = None

    def as_json(self) -> dict[str, Any]:
        decision = self.should_run
        return {
            "rollout": self.rollout.as_json() if self.rollout is not None else None,
            "name": self.name,
            "shouldRun": (
                {
                    "evidence": decision.evidence,
                    "release": {"id": decision.release_id, "name": decision.release_name},
                    "decidedAt": evidence_time(decision.decided_at),
                }
                if decision is not None
                else None
            ),
            "targets": [t.as_json() for t in self.targets],
        }


@dataclass(frozen=True)
class Status:
    """Every target of every environment asked about, as the evidence branch says it."""

    ref: str
    head: str | None
    policy: str | None
    """The ratified policy the environments come from (None: before the genesis, the branch's)."""
    environments: list[EnvironmentStatus]

    @property
    def ok(self) -> bool:
        """Every target runs what it should (or has nothing to run)."""
        return all(t.state in OK_STATES for e in self.environments for t in e.targets)

    def as_json(self) -> dict[str, Any]:
        return {
            "evidenceRef": self.ref,
            "evidenceHead": self.head,
            "policy": self.policy,
            "ok": self.ok,
            "environments": [e.as_json() for e in self.environments],
        }


def read_status(repo: Repo, environment: str | None = None) -> Status:
    """The status of every target (of `environment` only, when given: `InvalidInput` when the ratified
    policy has no such environment)."""
    from .chain import open_evidence
    from .passes import source_commit

    source = repo.tree(source_commit(repo)[1])
    ref, head, index = open_evidence(repo, source)
    try:
        evidence = repo.tree(head) if head else None
        policy, environments = environments_in_force(index, evidence, source)
        if environment is not None:
            if environment not in environments:
                where = f"the ratified policy ({policy})" if policy else "the branch (nothing ratified yet)"
                known = ", ".join(sorted(environments)) or "none"
                raise InvalidInput(f"no environment {environment!r} in {where}; environments: {known}")
            environments = {environment: environments[environment]}
        found = [_environment_status(index, evidence, env) for _, env in sorted(environments.items())]
    finally:
        index.close()
    return Status(ref, head, policy, found)


def environments_in_force(
    index: EvidenceIndex, evidence: GitTree | None, source: GitTree
) -> tuple[str | None, dict[str, Environment]]:
    """(the ratified policy, its environments); before any genesis (None, the branch's)."""
    from .governance import PolicyError, PolicyView, stored_policy
    from .manifests import load_repository

    ratified = index.ratified()
    if ratified is None or ratified.policy is None or evidence is None:
        return None, load_repository(source, promotions=set(), releases=set()).environments
    try:
        policy = stored_policy(evidence, ratified.policy)
    except PolicyError as exc:
        raise InvalidInput(f"the policy in force is unreadable: {exc}") from exc
    view = PolicyView(policy, source)
    return policy.id, load_repository(view, promotions=set(), releases=set()).environments


def _environment_status(
    index: EvidenceIndex, evidence: GitTree | None, environment: Environment
) -> EnvironmentStatus:
    from .agent import rollout

    should_run = index.current(environment.name)
    carried = index.carried_out(should_run.evidence) if should_run is not None else []
    reasons = _reasons(evidence)
    latest = rollout.latest_by_target(environment.name, carried)
    targets = []
    for target in environment.targets:
        chain = target_chain(environment.name, target.name)
        last, observed = _last_records(index, index.chain_head(chain))
        raw = evidence.read(target_pointer_path(environment.name, target.name)) if evidence else None
        sticker = believe(parse_sticker(raw), index, chain) if raw is not None else None
        state, reason = target_state(should_run, sticker, last)
        tried = latest.get(target.name)
        if (
            should_run is not None
            and state == "pending"
            and tried is not None
            and tried.result != "succeeded"
        ):
            if last is not None and last.record_type == ROLLBACK:  # failed here, then rolled back
                state = "rolled-back"
                reason = f"{should_run.release_name} failed here; {reason_after_rollback(last)}"
            else:
                state, reason = "failed", f"its last deployment of {should_run.release_name} {tried.result}"
        elif should_run is not None and state == "pending":
            position = rollout.position(environment, target.name, should_run.evidence, carried, reasons)
            if position.state != rollout.GO:
                state, reason = position.state, position.reason
        if state == "in-sync" and observed is not None and observed.result == "drifted":
            state = "drifted"
            reason = f"runs {should_run.release_name if should_run else '?'}, but {reasons(observed)}"
        targets.append(
            TargetStatus(target.name, target.project, target.agent, state, sticker, last, reason, observed)
        )
    return EnvironmentStatus(
        environment.name, should_run, targets, _rollout(environment, should_run, carried, targets, reasons)
    )


def _last_records(index: EvidenceIndex, head: str | None) -> tuple[Record | None, Record | None]:
    """(the newest deployment or rollback record of a target's chain, the newest drift observation
    made since: None when there is none)."""
    observed = None
    seen: set[str] = set()
    while head is not None and head not in seen:
        seen.add(head)
        record = index.record(head)
        if record is None:
            break
        if record.record_type != DRIFT:
            return record, observed
        observed = observed or record
        head = record.previous
    return None, observed


def reason_after_rollback(record: Record) -> str:
    if record.result == "rolled-back":
        return f"rolled back: {record.release_name} runs again"
    return f"rolling back to {record.release_name} failed too"


def _rollout(
    environment: Environment,
    should_run: Record | None,
    carried: list[Record],
    targets: list[TargetStatus],
    reasons: Callable[[Record], str],
) -> RolloutStatus:
    from .agent import rollout

    strategy, size = environment.rollout.strategy, environment.rollout.batchSize
    if should_run is None or not targets:
        return RolloutStatus(strategy, size, "none", "nothing to roll out")
    halted = rollout.halted_at(environment, carried)
    if halted is not None:
        name, batch, record = halted
        why = reasons(record)
        return RolloutStatus(
            strategy,
            size,
            "halted",
            f"halted at batch {batch + 1}: {name} failed {should_run.release_name}"
            + (f" ({why})" if why else ""),
            halted_at=name,
        )
    done = sum(1 for t in targets if t.state in ("in-sync", "drifted"))
    if done == len(targets):
        return RolloutStatus(strategy, size, "complete", f"{should_run.release_name} runs on every target")
    return RolloutStatus(
        strategy, size, "in-progress", f"{should_run.release_name} runs on {done} of {len(targets)} target(s)"
    )


def _reasons(evidence: GitTree | None) -> Callable[[Record], str]:
    """The `reason` a deployment record gives, read from its statement (checked against its id)."""
    from .ledger import Ledger

    def reason(record: Record) -> str:
        why = (Ledger(evidence).predicate(record.evidence) or {}).get("reason") if evidence else None
        return why if isinstance(why, str) else ""

    return reason


def parse_sticker(raw: bytes) -> Sticker:
    """The fields of a sticker's bytes (not believed yet: see `believe`)."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return Sticker(None, None, None, None, False, "not a sticker (not a JSON object)")
    release = value.get("release")
    return Sticker(
        decision=_text(value.get("decision")),
        deployment=_text(value.get("deployment")),
        release=(
            {"id": _text(release.get("id")), "name": _text(release.get("name"))}
            if isinstance(release, dict)
            else None
        ),
        deployed_at=_text(value.get("deployedAt")),
        verified=False,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def believe(sticker: Sticker, index: EvidenceIndex, chain: str) -> Sticker:
    """`sticker`, believed (`verified`) only when the deployment record it names is in the index (it
    verifies), is of `chain`, carried out the sticker's decision and release, and succeeded."""
    if sticker.problem is not None:
        return sticker
    problem = _disbelief(sticker, index, chain)
    return Sticker(
        sticker.decision,
        sticker.deployment,
        sticker.release,
        sticker.deployed_at,
        verified=problem is None,
        problem=problem,
    )


def _disbelief(sticker: Sticker, index: EvidenceIndex, chain: str) -> str | None:
    if sticker.deployment is None:
        return "it names no deployment record"
    record = index.record(sticker.deployment)
    if record is None:
        return f"it names {sticker.deployment}, which is no verified record on the evidence branch"
    if record.record_type not in (DEPLOYMENT, ROLLBACK) or record.environment != chain:
        return f"{sticker.deployment} is not a deployment record of this target"
    if record.source != sticker.decision:
        return f"{sticker.deployment} carried out {record.source}, not the decision it names"
    release_id = (sticker.release or {}).get("id")
    if release_id is not None and release_id != record.release_id:
        return f"{sticker.deployment} deployed release {record.release_id}, not the one it names"
    if record.result not in ("succeeded", "rolled-back"):
        return f"{sticker.deployment} {record.result}: it did not leave that decision running"
    return None


def target_state(
    should_run: Record | None, sticker: Sticker | None, last: Record | None
) -> tuple[State, str]:
    """The state of one target, and why, from what should run, its (judged) sticker and its last
    deployment record (pure)."""
    believed = sticker if sticker is not None and sticker.verified else None
    if should_run is None:
        if last is None and believed is None:
            return "never", "nothing allowed in its environment yet, nothing deployed"
        return "unknown", "deployed, but its environment has no allowed decision on the branch"
    wanted = should_run.evidence
    if believed is not None and believed.decision == wanted:
        return "in-sync", f"runs {should_run.release_name}"
    if last is not None and last.source == wanted:
        if last.result != "succeeded":
            return "failed", f"its last deployment of {should_run.release_name} {last.result}"
        why = sticker.problem if sticker is not None and sticker.problem else "its sticker says otherwise"
        return "unknown", f"{should_run.release_name} was deployed, but its sticker is not believed: {why}"
    if last is None:
        return "pending", f"{should_run.release_name} is allowed, nothing deployed yet"
    return "pending", f"{should_run.release_name} is allowed, not deployed yet"
