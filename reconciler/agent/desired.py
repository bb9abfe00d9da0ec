"""What a target should run, read from the evidence branch and believed only when it verifies.

The agent trusts nothing the branch merely says: the index it builds holds only records that verify
under the policy they name (the core's `Keyring`), the policy chain must start at the genesis the agent
was pinned to (`--root`), and the target, its environment and its agent key are taken from the policy in
force. What should run is the environment's newest allowed decision (never the unsigned pointer file),
and the lock it names is read back and hashed against the statement. Reads the mirror; writes only the
index cache inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInput
from ..evidence import sha256_hex
from ..governance import Keyring, Policy, PolicyError, PolicyView, agent_key_path, agent_keys
from ..history import EvidenceIndex, Record
from ..indexing import open_index
from ..ledger import Ledger, artifact_path, target_chain
from ..locking import read_lock
from ..manifests import load_repository
from ..models import Environment, ReleaseLock, Target
from ..protocols import AgentTarget
from ..render import LOCK_FILE
from ..repo import GitTree, Repo
from ..sign import TrustedKeys
from . import rollout
from .rollout import Position


@dataclass(frozen=True)
class Desired:
    """The verified state of one target: its policy, environment, and the decision it should run."""

    target: AgentTarget
    agent: str
    """The agent plugin the environment names for the target (`targets[].agent`)."""
    environment: Environment
    policy: Policy
    policy_record: str
    agent_keys: TrustedKeys
    decision: Record | None
    """The environment's newest allowed decision (None: nothing allowed yet)."""
    lock: bytes | None
    """The compose lock of that decision, checked against its hash."""
    previous_deployment: str | None
    """The head of this target's chain of deployment records."""
    tenant: str
    release: ReleaseLock | None
    """The lock of the decision's release (`releases/<name>.json`)."""
    rollback_safe: bool = True
    """Whether the decision's release may be rolled back from automatically (its signed statement's
    `release.rollbackSafe`)."""
    position: Position | None = None
    """Where the target stands in the decision's rollout."""
    running: Running | None = None
    """What the target ran before (its sticker's decision), as the branch verifies it."""


@dataclass(frozen=True)
class Running:
    """A decision a target ran, verified again on the branch: what an automatic rollback re-applies."""

    decision: Record
    lock: bytes
    release: ReleaseLock | None
    rollback_safe: bool


def read_desired(
    repo: Repo, ref: str, head: str, root: str, target_name: str, running: str | None = None
) -> Desired:
    """The target's verified state on `ref` at `head`; `running` is the decision its sticker names.
    `InvalidInput` when the chain does not start at `root`, the target is in no environment of the
    policy in force, or the lock does not hash."""
    tree = repo.tree(head)
    keyring = Keyring(tree)
    index = open_index(repo, ref, head, keyring=keyring)
    try:
        return _desired(tree, index, keyring, root, target_name, running)
    finally:
        index.close()


def _desired(
    tree: GitTree, index: EvidenceIndex, keyring: Keyring, root: str, target_name: str, running: str | None
) -> Desired:
    genesis = index.genesis()
    if genesis is None or genesis.evidence != root:
        found = genesis.evidence if genesis else "none"
        raise InvalidInput(
            f"the policy chain on the evidence branch starts at {found}, not at the pinned root {root}: "
            "refusing to deploy anything from it"
        )
    ratified = index.ratified()
    if ratified is None or ratified.policy is None:
        raise InvalidInput("the evidence branch has no ratified policy")
    try:
        policy = keyring.policy(ratified.policy)
        repository = load_repository(PolicyView(policy, tree), promotions=set(), releases=set())
    except PolicyError as exc:
        raise InvalidInput(f"the policy in force is unreadable: {exc}") from exc
    environment, spec = _find_target(repository.environments, target_name, policy.id)
    keys = agent_keys(policy, target_name)
    if not keys:
        raise InvalidInput(
            f"the policy in force ({policy.id}) holds no {agent_key_path(target_name)}: add the agent's "
            "public key through a ratified policy change"
        )
    target = AgentTarget(environment.name, spec.name, spec.endpoint, spec.project)
    decision = index.current(environment.name)
    lock = _lock(tree, decision) if decision is not None else None
    head = index.chain_head(target_chain(environment.name, target_name))
    position = None
    if decision is not None:
        position = rollout.position(
            environment,
            target_name,
            decision.evidence,
            index.carried_out(decision.evidence),
            reason_of=lambda record: _reason(tree, record),
        )
    return Desired(
        target=target,
        agent=spec.agent,
        environment=environment,
        policy=policy,
        policy_record=ratified.evidence,
        agent_keys=keys,
        decision=decision,
        lock=lock,
        previous_deployment=head,
        tenant=repository.settings.tenant,
        release=read_lock(tree, decision.release_name) if decision is not None else None,
        rollback_safe=_rollback_safe(tree, decision) if decision is not None else True,
        position=position,
        running=_running(tree, index, environment.name, running) if running else None,
    )


def _running(tree: GitTree, index: EvidenceIndex, environment: str, decision_id: str) -> Running | None:
    """The decision a sticker names, when it is a verified allow of this environment with its lock."""
    record = index.record(decision_id)
    if record is None or record.environment != environment or record.result != "allow":
        return None
    try:
        lock = _lock(tree, record)
    except InvalidInput:
        return None
    return Running(record, lock, read_lock(tree, record.release_name), _rollback_safe(tree, record))


def _rollback_safe(tree: GitTree, record: Record) -> bool:
    """A decision's `release.rollbackSafe` as its signed statement says (absent: true; a statement
    that does not hash to its id, which the index would not hold, says nothing: false, the safe side)."""
    predicate = Ledger(tree).predicate(record.evidence)
    if predicate is None:
        return False
    release = predicate.get("release")
    return not (isinstance(release, dict) and release.get("rollbackSafe") is False)


def _reason(tree: GitTree, record: Record) -> str:
    reason = (Ledger(tree).predicate(record.evidence) or {}).get("reason")
    return reason if isinstance(reason, str) else ""


def _find_target(
    environments: dict[str, Environment], name: str, policy_id: str
) -> tuple[Environment, Target]:
    for environment in environments.values():
        for target in environment.targets:
            if target.name == name:
                return environment, target
    raise InvalidInput(f"target {name!r} is in no environment of the policy in force ({policy_id})")


def _lock(tree: GitTree, decision: Record) -> bytes:
    digest = decision.artifacts.get(LOCK_FILE)
    if digest is None:
        raise InvalidInput(f"{decision.evidence} names no {LOCK_FILE}")
    path = artifact_path(digest, LOCK_FILE)
    data = Ledger(tree).tree.read(path)
    if data is None or sha256_hex(data) != digest:
        raise InvalidInput(f"{path}: missing, or its bytes do not hash to the digest the decision names")
    return data
