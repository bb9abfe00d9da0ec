"""The reconcile pass: read the repository at its branch, decide, and write one evidence commit.

One pass: fetch the branch commit -> load and validate manifests -> lock new releases (resolving tags
once) -> decide every open promotion (gates, in environment order) -> render the compose lock of each
allow -> build statements and inputs -> sign -> commit ALL new files to the evidence ref in ONE commit,
moved by compare-and-swap. A lost race re-reads the evidence ref and decides again from scratch, so each
promotion gets exactly one record. Pending promotions leave no record (they are status, shown by
`plan` and `why`). `run()` repeats passes on a schedule (APScheduler). No printing here.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from apscheduler.schedulers.blocking import BlockingScheduler
from pydantic import ValidationError

from . import __version__, render
from .audit import _keyless_verifier, keyless_files
from .discover import Plugins
from .errors import InvalidInput, Problem, StellaError, Transient, ValidationFailed
from .evidence import (
    artifact_path,
    bundle_path,
    canonical,
    decision_statement,
    evidence_path,
    inputs_path,
    pointer,
    pointer_path,
    release_lock_path,
    rfc3339,
    sha256_hex,
)
from .gates.quota import day_start
from .governance import (
    POINTER,
    POLICY_CHAIN,
    RATIFICATION,
    Keyring,
    Policy,
    PolicyChange,
    PolicyError,
    PolicyView,
    RecordRejected,
    change_authors,
    encode_signed,
    governed_files,
    judge_change,
    pointer_json,
    policy_keys,
    ratification_statement,
    read_pointer,
    stored_policy,
    votes_of,
)
from .history import EvidenceIndex, Record, cache_path, open_index
from .identity import Verifier
from .manifests import GROUPS_FILE, Loader, held_promotion, load_repository, load_settings, manifest_of
from .models import (
    DecisionInputs,
    Environment,
    EvidenceSettings,
    Groups,
    InputActor,
    InputApproval,
    InputGate,
    InputPrior,
    InputVote,
    RatificationInputs,
    Release,
    ReleaseLock,
    Repository,
    Settings,
)
from .policy import CORE_GATES, Decision, PlannedGate, decide
from .protocols import Actor, ApprovalRecord, GateContext, GateResult, Signer
from .repo import CommitInfo, GitTree, RaceLost, Repo
from .resolve import Resolver, check_lock, resolve_release
from .sign import TrustedKeys

log = logging.getLogger(__name__)

MAX_RACES = 10
ALLOWED_SIGNERS = "trust/allowed_signers"
MIN_SECRET_LENGTH = 6
"""Secret values shorter than this are not searched for in rendered files (too many false alarms)."""


@dataclass
class Outcome:
    """What happened to one promotion in this pass."""

    promotion_id: str
    environment: str
    release: str
    decision: Decision | None = None
    evidence: str | None = None
    """The evidence id written (allow/deny), or of the earlier record when already decided."""
    problem: str | None = None
    inputs: DecisionInputs | None = None


@dataclass
class PassResult:
    """What one pass read and wrote, decided, left pending, and could not do."""

    source_commit: str
    evidence_commit: str | None = None
    locked: list[ReleaseLock] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    transient: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    """Quota messages: work deferred by a hard limit, and soft-limit warnings."""
    races: int = 0
    policy: str | None = None
    """The ratified policy the decisions were made under."""
    ratification: str | None = None
    """The ratification record this pass wrote (genesis or an approved change), if any."""
    policy_change: PolicyChange | None = None
    """The branch's policy when it differs from the ratified one, and where its ratification stands."""
    ignored: list[str] = field(default_factory=list)
    """Statements on the evidence branch that were not believed (they do not verify), with why."""

    @property
    def recorded(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.decision and o.decision.result != "pending" and o.evidence]

    @property
    def pending(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.decision and o.decision.result == "pending"]


def source_commit(repo: Repo, branch: str | None = None) -> tuple[str, str]:
    """(branch, commit) the reconciler reads: `branch` or the one `stella.yaml` at HEAD names."""
    if branch is None:
        head = repo.resolve_ref("HEAD")
        branch = load_settings(repo.tree(head)).branch if head else "main"
    commit = repo.resolve_ref(f"refs/heads/{branch}")
    if commit is None:
        raise InvalidInput(f"{repo.path}: branch {branch!r} does not exist (stella.yaml `branch:`)")
    return branch, commit


def read_lock(tree: GitTree, name: str) -> ReleaseLock | None:
    raw = tree.read(release_lock_path(name))
    if raw is None:
        return None
    try:
        return ReleaseLock.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise InvalidInput(f"evidence {release_lock_path(name)}: unreadable release lock: {exc}") from exc


def _lock_problem(release: Release, existing: ReleaseLock, differences: list[str]) -> Problem:
    return Problem(
        f"releases/{release.name}.yaml",
        None,
        f"release {release.name!r} was locked as {existing.id} and its file now differs "
        f"({'; '.join(differences)}); a release's digests never change: create a new release",
    )


def _depth(environments: Mapping[str, Environment], name: str) -> int:
    if name not in environments:
        return len(environments)
    depth, current = 0, environments[name].promotesFrom
    while current is not None and current in environments and depth < len(environments):
        depth, current = depth + 1, environments[current].promotesFrom
    return depth


@dataclass
class _Pass:
    """The working state of one attempt: the evidence as read, and what this attempt adds to it."""

    repo: Repo
    plugins: Plugins
    repository: Repository
    source: GitTree
    now: datetime
    index: EvidenceIndex
    locks: dict[str, ReleaseLock]
    offline: bool = False
    deferred: dict[str, str] = field(default_factory=dict)
    """Releases not locked this pass because of `limits.newDigestsPerDay`, with the reason."""
    policy: Policy | None = None
    """The ratified policy decisions are made under (its files are what `source` serves as governed)."""
    policy_record: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    statements: dict[str, bytes] = field(default_factory=dict)
    signing: dict[str, TrustedKeys] = field(default_factory=dict)
    """Statement hex -> the evidence keys allowed to sign it (those of the policy it names)."""
    pointers: dict[str, dict[str, Any]] = field(default_factory=dict)
    infos: dict[str, CommitInfo] = field(default_factory=dict)
    """Signed commits seen, by id: their payload and signature go into the inputs."""
    verifier: Verifier = field(init=False)

    def __post_init__(self) -> None:
        self.verifier = Verifier(self.source.read(ALLOWED_SIGNERS), ALLOWED_SIGNERS)

    def actor(self, info: CommitInfo) -> Actor:
        self.infos[info.id] = info
        return self.verifier.actor(info)

    def input_actor(self, actor: Actor) -> InputActor:
        info = self.infos.get(actor.commit or "")
        payload, signature = encode_signed(info.signed_payload, info.signature) if info else (None, None)
        return _input_actor(actor, payload, signature)

    def gate_plan(self, environment: Environment) -> list[PlannedGate]:
        planned = []
        wanted: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in CORE_GATES]
        limit = self.repository.settings.limits.deploymentsPerDay
        if limit is not None:
            used = self.index.allowed_since(day_start(self.now))
            quota = {"deploymentsPerDay": limit.model_dump(), "deploymentsToday": used}
            wanted = [(name, quota if name == "quota" else options) for name, options in wanted]
        wanted += [(g.plugin, g.options) for g in environment.gates]
        for name, options in wanted:
            gate = self.plugins.gates.get(name)
            if gate is None:
                planned.append(PlannedGate(name, None, options, self.plugins.unavailable("gates", name)))
            else:
                planned.append(PlannedGate(name, gate, options, version=gate.manifest.version))
        return planned

    def requester(self, promotion_id: str) -> tuple[Actor, datetime | None]:
        """The signer of the commit that wrote the promotion file, and when it was written."""
        commit = self.repository.commit
        assert commit is not None
        info = self.repo.last_writer(commit, f"promotions/{promotion_id}.yaml")
        if info is None:
            return Actor(None, reason="promotion file not found in history", code="unsigned"), None
        return self.actor(info), info.time

    def approvals(self, promotion_id: str, changed_in: str | None) -> tuple[ApprovalRecord, ...]:
        """Each approval file of the promotion with the verified signer of the commit that wrote it;
        `stale` when that commit does not descend from `changed_in` (the promotion file's last change)."""
        commit = self.repository.commit
        assert commit is not None
        records = []
        for identity, approval in sorted(self.repository.approvals.get(promotion_id, {}).items()):
            writers = list(self.repo.writers(commit, f"approvals/{promotion_id}/{identity}.yaml"))
            signers = [self.actor(info) for info in writers]
            earlier = tuple(sorted({a.identity for a in signers[1:] if a.verified and a.identity}))
            stale = bool(writers and changed_in and not self.repo.is_ancestor(changed_in, writers[0].id))
            records.append(
                ApprovalRecord(
                    identity=identity,
                    decision=approval.decision,
                    release=approval.release,
                    comment=approval.comment,
                    signer=signers[0] if signers else Actor(None, reason="not in history", code="unsigned"),
                    earlier_signers=earlier,
                    environment=approval.environment,
                    stale=stale,
                )
            )
        return tuple(records)

    def decide(self, promotion_id: str) -> Outcome:
        promotion = self.repository.promotions[promotion_id]
        if promotion.environment not in self.repository.environments:
            outcome = Outcome(promotion_id, promotion.environment, promotion.release)
            waiting = GateResult(
                "policy",
                "pending",
                "policy-unratified",
                f"environment {promotion.environment} is not in the ratified policy "
                f"{self.policy.id if self.policy else ''}; it counts once a policy with it is ratified",
            )
            outcome.decision = Decision("pending", (waiting,), None)
            return outcome
        environment = self.repository.environments[promotion.environment]
        outcome = Outcome(promotion_id, environment.name, promotion.release)
        lock = self.locks.get(promotion.release)
        if lock is None and promotion.release in self.deferred:
            waiting = GateResult("quota", "pending", "quota-new-digests", self.deferred[promotion.release])
            outcome.decision = Decision("pending", (waiting,), None)
            return outcome
        if lock is None:
            outcome.problem = f"release {promotion.release!r} has no lock (see the release's problem)"
            return outcome
        requester, requested_at = self.requester(promotion_id)
        approvals = self.approvals(promotion_id, requester.commit)
        history = (
            tuple(self.index.priors(environment.promotesFrom, lock.id)) if environment.promotesFrom else ()
        )
        plan = self.gate_plan(environment)
        groups = {name: tuple(members) for name, members in self.repository.groups.groups.items()}
        ctx = GateContext(
            now=self.now,
            promotion_id=promotion_id,
            promotion=promotion,
            release=lock,
            environment=environment,
            options={},
            requester=requester,
            history=history,
            approvals=approvals,
            groups=groups,
            files=self.source,
            mirror=self.repository.settings.mirror,
            offline=self.offline,
        )
        outcome.decision = decide(ctx, plan)
        template_info = None
        if environment.template:
            raw = self.source.read(environment.template) or b""
            template_info = {"path": environment.template, "sha256": sha256_hex(raw)}
        outcome.inputs = DecisionInputs(
            tenant=self.repository.settings.tenant,
            sourceCommit=self.repository.commit or "",
            promotionId=promotion_id,
            promotion=promotion,
            release=lock,
            environment=environment,
            requester=self.input_actor(requester),
            approvals=[
                InputApproval(
                    identity=a.identity,
                    decision=a.decision,
                    release=a.release,
                    comment=a.comment,
                    signer=self.input_actor(a.signer),
                    earlierSigners=list(a.earlier_signers),
                    environment=a.environment,
                    stale=a.stale,
                )
                for a in approvals
            ],
            groups={k: list(v) for k, v in groups.items()},
            history=[
                InputPrior(
                    evidence=p.evidence,
                    environment=p.environment,
                    releaseId=p.release_id,
                    result=p.result,
                    decidedAt=p.decided_at,
                )
                for p in history
            ],
            gates=[InputGate(name=p.name, version=p.version, options=p.options) for p in plan],
            requestedAt=requested_at,
            decidedAt=self.now,
            template=template_info,
            policy=self.policy.id if self.policy else None,
        )
        if outcome.decision.result != "pending":
            outcome.evidence = self.record(outcome, environment, lock, requester, approvals, requested_at)
        return outcome

    def record(
        self,
        outcome: Outcome,
        environment: Environment,
        lock: ReleaseLock,
        requester: Actor,
        approvals: tuple[ApprovalRecord, ...],
        requested_at: datetime | None,
    ) -> str:
        """Add the statement, inputs and (for allow) the rendered lock of a decision; return its id."""
        assert outcome.decision is not None and outcome.inputs is not None
        artifacts: dict[str, str] = {}
        images: list[str] = []
        if outcome.decision.result == "allow":
            template = None
            if environment.template:
                template = (self.source.read(environment.template) or b"").decode("utf-8", "replace")
            data = render.render(
                lock,
                environment,
                template,
                template_path=environment.template,
                forbidden=_secret_values(environment),
            )
            images = render.lock_images(data)  # every image the lock runs is a subject of the statement
            digest = sha256_hex(data)
            artifacts[render.LOCK_FILE] = digest
            self.files[artifact_path(digest, render.LOCK_FILE)] = data
        inputs_bytes = canonical(outcome.inputs.model_dump(mode="json"))
        inputs_hex = sha256_hex(inputs_bytes)
        self.files[inputs_path(inputs_hex)] = inputs_bytes
        previous = self.index.chain_head(environment.name)
        promotion = self.repository.promotions[outcome.promotion_id]
        statement = decision_statement(
            record_type="release_decision",
            tenant=self.repository.settings.tenant,
            version=__version__,
            release=lock,
            environment=environment.name,
            promotion_id=outcome.promotion_id,
            promotion={"reason": promotion.reason, "commit": requester.commit},
            actors={"requester": _actor_json(requester), "approvers": _approvers_json(outcome, approvals)},
            result=outcome.decision.result,
            gates=outcome.decision.gates,
            artifacts=artifacts,
            inputs_hex=inputs_hex,
            requested_at=requested_at,
            decided_at=self.now,
            previous=previous,
            extra_images=images,
        )
        if self.policy is not None:
            statement["predicate"]["policy"] = {"id": self.policy.id, "record": self.policy_record}
        statement_bytes = canonical(statement)
        hex_id = sha256_hex(statement_bytes)
        evidence_id = f"sha256:{hex_id}"
        self.files[evidence_path(hex_id)] = statement_bytes
        self.statements[hex_id] = statement_bytes
        if self.policy is not None:
            self.signing[hex_id] = policy_keys(self.policy)
        record = Record(
            evidence=evidence_id,
            record_type="release_decision",
            environment=environment.name,
            promotion=outcome.promotion_id,
            release_id=lock.id,
            release_name=lock.name,
            result=outcome.decision.result,
            decided_at=self.now,
            previous=previous,
            artifacts=artifacts,
            policy=self.policy.id if self.policy else None,
        )
        self.index.add(record)
        current = self.index.current(environment.name)
        self.pointers[environment.name] = pointer(
            environment=environment.name,
            head=evidence_id,
            current=_current_json(current),
        )
        return evidence_id


def _secret_values(environment: Environment) -> list[str]:
    values = []
    for ref in environment.secrets.values():
        if ref.startswith("env:"):
            value = os.environ.get(ref[4:], "")
            if len(value) >= MIN_SECRET_LENGTH:
                values.append(value)
    return values


def _input_actor(actor: Actor, payload: str | None = None, signature: str | None = None) -> InputActor:
    return InputActor(
        identity=actor.identity,
        commit=actor.commit,
        key=actor.key,
        verified=actor.verified,
        reason=actor.reason,
        code=actor.code,
        time=actor.time,
        payload=payload,
        signature=signature,
    )


def _actor_json(actor: Actor) -> dict[str, Any]:
    return {
        "identity": actor.identity,
        "commit": actor.commit,
        "key": actor.key,
        "verified": actor.verified,
        "reason": actor.reason,
        "time": rfc3339(actor.time) if actor.time else None,
    }


def _approvers_json(outcome: Outcome, approvals: tuple[ApprovalRecord, ...]) -> list[dict[str, Any]]:
    """Every approval file with its signer, and whether (and why not) the approvals gate counted it."""
    gate = (
        next((g for g in outcome.decision.gates if g.gate == "approvals"), None) if outcome.decision else None
    )
    ignored: dict[str, str] = {}
    listed = gate.facts.get("ignored") if gate is not None else None
    for item in listed if isinstance(listed, list) else []:
        if isinstance(item, dict):
            ignored[str(item["identity"])] = str(item["reason"])
    return [
        {
            "identity": a.identity,
            "decision": a.decision,
            "comment": a.comment,
            "release": a.release,
            "commit": a.signer.commit,
            "key": a.signer.key,
            "signer": a.signer.identity,
            "verified": a.signer.verified,
            "time": rfc3339(a.signer.time) if a.signer.time else None,
            "counted": a.identity not in ignored,
            "reason": ignored.get(a.identity, "counted"),
        }
        for a in approvals
    ]


def _current_json(record: Record | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "release": record.release_name,
        "releaseId": record.release_id,
        "evidence": record.evidence,
        "decidedAt": record.decided_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "artifacts": record.artifacts,
    }


def digests_locked_since(repo: Repo, head: str | None, since: datetime) -> set[str]:
    """Digests of the release locks the evidence branch gained at or after `since` (walks back only
    over the commits of that period)."""
    if head is None:
        return set()
    tree = repo.tree(head)
    digests: set[str] = set()
    for commit_id, parent in repo.first_parent_since(head, since):
        for path in repo.added_paths(parent, commit_id, "releases/") if parent else tree.listdir("releases"):
            name = path.rsplit("/", 1)[-1].removesuffix(".json")
            lock = read_lock(tree, name)
            if lock is not None:
                digests |= {c.digest for c in lock.components.values()}
    return digests


def _locks(
    repository: Repository,
    tree: GitTree | None,
    resolver: Resolver,
    result: PassResult,
    progress: Callable[[str], None] | None,
    budget: _DigestBudget | None = None,
) -> tuple[dict[str, ReleaseLock], dict[str, ReleaseLock]]:
    """(all usable locks, new ones to write). Releases whose file disagrees with their lock are problems;
    releases whose new digests would go over `limits.newDigestsPerDay` wait for the next day."""
    usable: dict[str, ReleaseLock] = {}
    new: dict[str, ReleaseLock] = {}
    for name, release in sorted(repository.releases.items()):
        existing = read_lock(tree, name) if tree else None
        if existing is not None:
            differences = check_lock(release, existing)
            if differences:
                result.problems.append(_lock_problem(release, existing, differences))
            else:
                usable[name] = existing
            continue
        if progress:
            progress(f"resolving release {name}")
        try:
            lock = resolve_release(release, resolver)
            if budget is not None and not budget.take(lock, result):
                continue
            usable[name] = new[name] = lock
        except Transient as exc:
            result.transient.append(f"release {name}: {exc}")
        except StellaError as exc:
            result.problems.append(Problem(f"releases/{name}.yaml", None, str(exc)))
    return usable, new


@dataclass
class _DigestBudget:
    """`limits.newDigestsPerDay`: the digests locked today, and the limit they count against."""

    hard: int
    soft: int | None
    used: set[str]
    deferred: dict[str, str] = field(default_factory=dict)

    def take(self, lock: ReleaseLock, result: PassResult) -> bool:
        """Count the lock's new digests; False (with a message) when they would go over the hard limit."""
        fresh = {c.digest for c in lock.components.values()} - self.used
        total = len(self.used) + len(fresh)
        if total > self.hard:
            message = (
                f"release {lock.name} not locked: limits.newDigestsPerDay: {len(self.used)} of {self.hard} "
                f"used today (UTC) and it adds {len(fresh)}; it will be locked on a later day"
            )
            result.limits.append(message)
            self.deferred[lock.name] = message
            return False
        if self.soft is not None and total > self.soft:
            result.limits.append(
                f"warning: limits.newDigestsPerDay: {total} of {self.hard} used today, "
                f"over the soft limit of {self.soft}"
            )
        self.used |= fresh
        return True


@dataclass
class Evaluation:
    """A pass's decisions before they are written: what `plan`, `why` and `reconcile` share.

    Holds the evidence index open: `keep()` after the evidence commit landed (the index stores this
    pass's records and where it stopped), `discard()` otherwise (they are forgotten).
    """

    result: PassResult
    state: _Pass
    new_locks: dict[str, ReleaseLock]
    evidence_head: str | None
    branch: str
    index: EvidenceIndex
    recheck: dict[str, list[str]]
    ref: str = ""
    """The evidence ref read and written (where the policy chain is)."""
    keyring: Keyring | None = None

    def keep(self, evidence_head: str | None) -> None:
        self.index.keep(
            evidence=evidence_head or "",
            source=self.result.source_commit,
            recheck=json.dumps(self.recheck, sort_keys=True),
        )
        self.index.close()

    def discard(self) -> None:
        self.index.discard()
        self.index.close()


def _incremental(repo: Repo, index: EvidenceIndex, commit: str) -> tuple[set[str], set[str]] | None:
    """(promotions, releases) to look at since the last pass, or None when a full pass is needed.

    Only promotions, approvals and releases changed since the last pass's source commit, plus what that
    pass left to re-check (pending promotions, releases with problems). Any other change (settings,
    environments, trust, templates, mirror data) can change any decision: then everything is read.
    """
    previous = index.meta("source")
    recheck = json.loads(index.meta("recheck") or "{}")
    if not previous or not isinstance(recheck, dict) or not repo.is_ancestor(previous, commit):
        return None
    promotions = set(recheck.get("promotions", []))
    releases = set(recheck.get("releases", []))
    for path in repo.changed_paths(previous, commit) if previous != commit else []:
        kind = manifest_of(path)
        if kind is None:
            return None
        if kind[0] == "policy":
            continue  # judged every pass while a policy change is open
        (promotions if kind[0] in ("promotion", "approval") else releases).add(kind[1])
    return promotions, releases


def evidence_ref(repo: Repo, settings: Settings) -> str:
    """The evidence ref a pass reads and writes: where the policy chain is, never where an unratified
    `stella.yaml` moved it.

    The ref this repository's reconciler pinned (`.git/stella/evidence-ref`, written by its first
    pass), if any. Else a ref holding a chain whose ratified `stella.yaml` names that very ref (a copy
    of a chain under another ref names the original, and is not taken): the one `settings` names, the
    default, or another `refs/heads/stella/*` ref, in that order. Else (no chain anywhere: the genesis
    goes there) the ref `settings` names.
    """
    pinned = _pinned_ref(repo)
    if pinned is not None:
        return pinned
    named, default = settings.evidence.ref, EvidenceSettings().ref
    others = [r for r in repo.refs("refs/heads/stella/") if r not in (named, default)]
    chains = [ref for ref in dict.fromkeys([named, default, *others]) if _chain_names(repo, ref) == ref]
    if len(chains) > 1:
        log.warning("several refs hold a policy chain (%s): using %s", ", ".join(chains), chains[0])
    if chains:
        if chains[0] != named:
            log.warning("stella.yaml names evidence ref %s, but the policy chain is on %s", named, chains[0])
        return chains[0]
    return named


def _chain_names(repo: Repo, ref: str) -> str | None:
    """The evidence ref the ratified `stella.yaml` of the chain on `ref` names (None: no chain)."""
    head = repo.resolve_ref(ref)
    tree = repo.tree(head) if head else None
    pointer = read_pointer(tree) if tree is not None else None
    if tree is None or pointer is None or not isinstance(pointer.get("id"), str):
        return None
    try:
        return load_settings(PolicyView(stored_policy(tree, pointer["id"]), tree)).evidence.ref
    except (PolicyError, ValidationFailed):
        return None


def _pin_path(repo: Repo) -> Path:
    return repo.path / "stella" / "evidence-ref"


def _pinned_ref(repo: Repo) -> str | None:
    try:
        text = _pin_path(repo).read_text().strip()
    except OSError:
        return None
    return text if text.startswith("refs/heads/") else None


def pin_ref(repo: Repo, ref: str) -> None:
    """Remember the evidence ref this repository's passes write (so that a later unratified change of
    `evidence.ref`, or a chain someone starts on another ref, moves nothing). Best effort."""
    if _pinned_ref(repo) == ref:
        return
    try:
        _pin_path(repo).parent.mkdir(parents=True, exist_ok=True)
        _pin_path(repo).write_text(ref + "\n")
    except OSError as exc:
        log.info("cannot pin the evidence ref (%s)", exc)


def open_evidence(repo: Repo, source: GitTree) -> tuple[str, str | None, EvidenceIndex]:
    """(evidence ref, its head, its index) as a pass of `source` reads them: only verified records."""
    ref = evidence_ref(repo, load_settings(source))
    head = repo.resolve_ref(ref)
    keyring = _keyring(repo.tree(head) if head else None, source)
    return ref, head, open_index(repo, ref, head, keyring=keyring)


def ratified_settings(repo: Repo, settings: Settings) -> Settings:
    """The `stella.yaml` of the policy ratified on the evidence branch (`settings`, the branch's own,
    before any genesis)."""
    ref = evidence_ref(repo, settings)
    head = repo.resolve_ref(ref)
    pointer = read_pointer(repo.tree(head)) if head else None
    if pointer is None or not isinstance(pointer.get("id"), str):
        return settings
    tree = repo.tree(head or "")
    try:
        policy = stored_policy(tree, pointer["id"])
        return load_settings(PolicyView(policy, tree))
    except (PolicyError, ValidationFailed) as exc:
        raise InvalidInput(f"{ref}: the ratified policy is unreadable: {exc}") from exc


@dataclass
class _Governed:
    """The policy a pass decides under, and what the pass ratified or found pending."""

    policy: Policy
    record: str | None
    proposed: Policy | None
    change: PolicyChange | None = None
    ratified_now: bool = False


def _ratified_settings(policy: Policy, source: GitTree) -> tuple[Settings, Groups]:
    view = PolicyView(policy, source)
    settings = load_settings(view)
    loader = Loader(view)
    groups = Groups(apiVersion="stella/v1", kind="Groups")
    if view.size(GROUPS_FILE) is not None:
        loaded = loader._model(GROUPS_FILE, Groups, "Groups")
        if loaded is None:
            raise ValidationFailed(loader.problems)
        groups = loaded[0]
    return settings, groups


def _govern(
    repo: Repo,
    index: EvidenceIndex,
    keyring: Keyring,
    source: GitTree,
    now: datetime,
) -> tuple[_Governed, _Pending]:
    """Which policy this pass decides under: the ratified one; the branch's own at a genesis; or the
    branch's when enough approvals ratify it now (DESIGN §8). Returns the ratification to write, if any."""
    pending = _Pending()
    problems: list[Problem] = []
    proposed: Policy | None
    try:
        proposed = Policy.of(governed_files(source))
    except PolicyError as exc:
        proposed, problems = None, [Problem(exc.file or "stella.yaml", None, str(exc))]
    ratified = index.ratified()
    if ratified is None:
        if proposed is None:
            raise ValidationFailed(problems)
        load_repository(PolicyView(proposed, source), promotions=set(), releases=set())
        settings = load_settings(PolicyView(proposed, source))
        governed = _Governed(proposed, None, proposed, ratified_now=True)
        pending.ratify(proposed, None, None, settings, {}, [], [], "genesis", source, now)
        governed.record = pending.record
        keyring.add(proposed)
        return governed, pending
    assert ratified.policy is not None
    policy = keyring.policy(ratified.policy)
    governed = _Governed(policy, ratified.evidence, proposed)
    if proposed is not None and proposed.id == policy.id:
        return governed, pending
    settings, groups = _ratified_settings(policy, source)
    votes = []
    vote_problems: list[Problem] = []
    authors: list[str] = []
    unverified: list[str] = []
    fixed_ref = None
    if proposed is not None:
        try:
            load_repository(PolicyView(proposed, source), promotions=set(), releases=set())
            proposed_settings = load_settings(PolicyView(proposed, source))
            if proposed_settings.evidence.ref != settings.evidence.ref:
                fixed_ref = proposed_settings.evidence.ref
        except ValidationFailed as exc:
            problems = exc.problems
        verifier = Verifier(policy.files.get(ALLOWED_SIGNERS), ALLOWED_SIGNERS)
        loader = Loader(source)
        approvals = loader.policy_votes(proposed.hex)
        vote_problems = loader.problems  # a broken approval file counts for nothing; it blocks nothing
        assert source.commit is not None
        votes = votes_of(repo, source.commit, approvals, verifier.actor, f"approvals/policy-{proposed.hex}")
        if not problems:
            authors, unverified = change_authors(repo, source.commit, ratified.source, verifier.actor)
    change = judge_change(
        ratified=policy.id,
        proposed=proposed,
        changed=proposed.changed_from(policy) if proposed else [],
        settings=settings,
        groups=groups,
        votes=votes,
        authors=authors,
        unverified_authors=unverified,
        problems=problems,
        fixed_ref=fixed_ref,
    )
    if proposed is not None:
        change.problems += vote_problems
    governed.change = change
    if change.state == "ratify" and proposed is not None:
        groups_json = {k: list(v) for k, v in groups.groups.items()}
        pending.ratify(
            proposed,
            policy,
            ratified.evidence,
            settings,
            groups_json,
            change.votes,
            authors,
            "approved",
            source,
            now,
        )
        keyring.add(proposed)
        governed = _Governed(proposed, pending.record, proposed, change, ratified_now=True)
    return governed, pending


@dataclass
class _Pending:
    """A ratification to write in this pass: its files, statement and the keys that may sign it."""

    files: dict[str, bytes] = field(default_factory=dict)
    statement: tuple[str, bytes] | None = None
    keys: TrustedKeys | None = None
    record: str | None = None
    index_record: Record | None = None

    def ratify(
        self,
        policy: Policy,
        previous: Policy | None,
        previous_record: str | None,
        settings: Settings,
        groups: dict[str, list[str]],
        votes: Sequence[Any],
        authors: list[str],
        reason: Literal["genesis", "approved"],
        source: GitTree,
        now: datetime,
    ) -> None:
        inputs = RatificationInputs(
            tenant=settings.tenant,
            sourceCommit=source.commit or "",
            policy=policy.id,
            previous=previous.id if previous else None,
            changed=policy.changed_from(previous),
            governance=settings.governance,
            groups=groups,
            authors=authors,
            approvals=[
                InputVote(
                    identity=j.vote.identity,
                    decision=j.vote.approval.decision,
                    comment=j.vote.approval.comment,
                    signer=_input_actor(j.vote.signer, *encode_signed(j.vote.payload, j.vote.signature)),
                    counted=j.counts,
                    reason=j.code,
                )
                for j in votes
            ],
            decidedAt=now,
        )
        inputs_bytes = canonical(inputs.model_dump(mode="json"))
        inputs_hex = sha256_hex(inputs_bytes)
        statement = ratification_statement(
            tenant=settings.tenant,
            version=__version__,
            policy=policy,
            previous_policy=previous.id if previous else None,
            changed=inputs.changed,
            approvers=[
                {
                    "identity": j.vote.identity,
                    "decision": j.vote.approval.decision,
                    "comment": j.vote.approval.comment,
                    "commit": j.vote.signer.commit,
                    "key": j.vote.signer.key,
                    "counted": j.counts,
                    "reason": j.code,
                }
                for j in votes
            ],
            reason=reason,
            source_commit=source.commit or "",
            inputs_hex=inputs_hex,
            decided_at=now,
            previous=previous_record,
        )
        raw = canonical(statement)
        hex_id = sha256_hex(raw)
        self.record = f"sha256:{hex_id}"
        self.files = {
            **policy.stored_files(),
            inputs_path(inputs_hex): inputs_bytes,
            evidence_path(hex_id): raw,
        }
        self.files[POINTER] = canonical(pointer_json(policy.id, self.record))
        self.statement = (hex_id, raw)
        self.keys = policy_keys(previous or policy)
        self.index_record = Record(
            evidence=self.record,
            record_type=RATIFICATION,
            environment=POLICY_CHAIN,
            promotion=None,
            release_id=policy.id,
            release_name="policy",
            result="ratified",
            decided_at=now,
            previous=previous_record,
            artifacts={},
            policy=policy.id,
            source=source.commit,
        )


def _keyring(tree: GitTree | None, source: GitTree) -> Keyring:
    """Evidence keys per policy from the branch; before any genesis, the source's evidence keys."""
    from .audit import trusted_keys

    try:
        legacy = trusted_keys(source)
    except InvalidInput as exc:
        log.warning("evidence keys at the source commit are unusable: %s", exc)
        legacy = TrustedKeys()
    return Keyring(tree, legacy=legacy, keyless=lambda files: _keyless_verifier(keyless_files(files)))


def evaluate(
    repo: Repo,
    plugins: Plugins,
    *,
    now: datetime,
    branch: str | None = None,
    commit: str | None = None,
    only: set[str] | None = None,
    incremental: bool = False,
    offline: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Decide what is open, without signing or writing. Used by `reconcile`, `plan` and `why`.

    `commit` reads that commit instead of the branch head (plans of a pull request); `only` limits the
    promotions decided. `incremental` (reconcile) reads only what changed since the last pass.
    Decisions are made under the ratified policy (DESIGN §8); the first pass ratifies the genesis, and
    a policy change with enough approvals is ratified before anything is decided.
    """
    now = now.astimezone(UTC).replace(microsecond=0)
    if commit is None:
        branch, commit = source_commit(repo, branch)
    else:
        branch = branch or commit[:12]
    source = repo.tree(commit)
    ref = evidence_ref(repo, load_settings(source))
    evidence_head = repo.resolve_ref(ref)
    tree = repo.tree(evidence_head) if evidence_head else None
    keyring = _keyring(tree, source)
    index = open_index(repo, ref, evidence_head, keyring=keyring)
    try:
        governed, ratification = _govern(repo, index, keyring, source, now)
        if ratification.index_record is not None:
            index.add(ratification.index_record)
        view = PolicyView(governed.policy, source)
        scope = _incremental(repo, index, commit) if incremental and not governed.ratified_now else None
        if only is not None:
            scope = (only, set())
        pending_envs = frozenset(
            name.removeprefix("environments/").removesuffix(".yaml")
            for name in (governed.proposed.files if governed.proposed else {})
            if name.startswith("environments/") and name.count("/") == 1
        )
        if scope is None:
            repository = load_repository(view, pending_environments=pending_envs, contain=True)
        else:
            repository = load_repository(
                view, promotions=scope[0], releases=scope[1], pending_environments=pending_envs, contain=True
            )
        offline = offline or repository.settings.offline
        result = PassResult(source_commit=commit, policy=governed.policy.id, policy_change=governed.change)
        result.problems += repository.problems
        result.ratification = ratification.record
        result.ignored = [f"{path}: {message}" for path, _, message in index.rejected()]
        budget = None
        digest_limit = repository.settings.limits.newDigestsPerDay
        if digest_limit is not None:
            used = digests_locked_since(repo, evidence_head, day_start(now))
            budget = _DigestBudget(digest_limit.hard, digest_limit.soft, used)
        with Resolver(repository.settings, plugins, view, offline=offline) as resolver:
            locks, new_locks = _locks(repository, tree, resolver, result, progress, budget)
        state = _Pass(repo, plugins, repository, view, now, index, locks, offline)  # type: ignore[arg-type]
        state.policy, state.policy_record = governed.policy, governed.record
        state.deferred = budget.deferred if budget is not None else {}
        state.files.update(ratification.files)
        if ratification.statement is not None and ratification.keys is not None:
            hex_id, raw = ratification.statement
            state.statements[hex_id] = raw
            state.signing[hex_id] = ratification.keys
        open_ids = [pid for pid in repository.promotions if index.decided(pid) is None]
        order = sorted(
            open_ids,
            key=lambda pid: (_depth(repository.environments, repository.promotions[pid].environment), pid),
        )
        for pid in order:
            if progress:
                progress(f"deciding {pid}")
            try:
                outcome = state.decide(pid)
            except StellaError as exc:
                promotion = repository.promotions[pid]
                outcome = Outcome(pid, promotion.environment, promotion.release, problem=str(exc))
            result.outcomes.append(outcome)
            if outcome.problem:
                result.problems.append(Problem(f"promotions/{pid}.yaml", None, outcome.problem))
    except BaseException:
        index.discard()
        index.close()
        raise
    held = {h for p in repository.problems if (h := held_promotion(p.file)) is not None}
    recheck = {
        "promotions": sorted(
            {
                o.promotion_id
                for o in result.outcomes
                if o.problem or (o.decision is not None and o.decision.result == "pending")
            }
            | held
        ),
        "releases": sorted(
            {
                p.file.split("/")[-1].removesuffix(".yaml")
                for p in result.problems
                if p.file.startswith("releases/")
            }
            | {name for name in repository.releases if name not in locks}
        ),
    }
    return Evaluation(result, state, new_locks, evidence_head, branch, index, recheck, ref, keyring)


def dry_run(
    repo: Repo,
    plugins: Plugins,
    *,
    now: datetime,
    commit: str | None = None,
    only: set[str] | None = None,
    offline: bool = False,
    progress: Callable[[str], None] | None = None,
) -> PassResult:
    """Decide as a pass would, and write nothing (`plan`, `why`)."""
    ev = evaluate(repo, plugins, now=now, commit=commit, only=only, offline=offline, progress=progress)
    ev.discard()
    for outcome in ev.result.outcomes:
        outcome.evidence = None  # computed, never written
    return ev.result


def reconcile(
    repo: Repo,
    plugins: Plugins,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    signer: Callable[[], Signer] | None = None,
    branch: str | None = None,
    offline: bool = False,
    progress: Callable[[str], None] | None = None,
) -> PassResult:
    """One reconcile pass -> at most one commit on the evidence ref (retried when a race is lost)."""
    for attempt in range(MAX_RACES):
        ev = evaluate(
            repo, plugins, now=now(), branch=branch, incremental=True, offline=offline, progress=progress
        )
        result, state = ev.result, ev.state
        result.races = attempt
        doubled = _decided_on_branch(repo, ev, {o.promotion_id for o in result.recorded})
        if doubled:
            log.warning(
                "the evidence index has no record of %s, but the branch does: rebuilding the index",
                ", ".join(sorted(doubled)),
            )
            ev.discard()
            cache = cache_path(repo, ev.ref)
            for stale in (cache, cache.with_name(cache.name + "-wal"), cache.with_name(cache.name + "-shm")):
                stale.unlink(missing_ok=True)
            continue
        try:
            files = dict(state.files)
            for name, new in ev.new_locks.items():
                files[release_lock_path(name)] = canonical(new.model_dump(mode="json"))
            for env_name, value in state.pointers.items():
                files[pointer_path(env_name)] = canonical(value)
            if state.statements:
                if signer is None:
                    raise InvalidInput("decisions to record but no signer configured")
                active = signer()
                for hex_id, statement in sorted(state.statements.items()):
                    if progress:
                        progress(f"signing sha256:{hex_id[:12]}")
                    _check_signer(active, state.signing.get(hex_id))
                    files[bundle_path(hex_id)] = active.sign(statement)
            result.locked = [ev.new_locks[n] for n in sorted(ev.new_locks)]
            if files:
                ref = ev.ref
                message = _message(result, ev.branch)
                result.evidence_commit = repo.commit_files(ref, ev.evidence_head, files, message)
        except RaceLost:
            log.info("evidence ref moved during the pass; deciding again")
            ev.discard()
            continue
        except BaseException:
            ev.discard()
            raise
        ev.keep(result.evidence_commit or ev.evidence_head)
        if result.evidence_commit or ev.evidence_head:
            pin_ref(repo, ev.ref)
        return result
    raise Transient(f"the evidence ref kept moving: gave up after {MAX_RACES} attempts")


def _decided_on_branch(repo: Repo, ev: Evaluation, promotions: set[str]) -> set[str]:
    """Which of `promotions` (about to be recorded) already have a verified decision on the evidence
    branch: never trust the index cache alone before signing a decision that is final. Reads the
    branch's statements (only those that mention one of the ids are parsed and verified)."""
    if not promotions or ev.evidence_head is None or ev.keyring is None:
        return set()
    tree = repo.tree(ev.evidence_head)
    needles = {f'"id":"{pid}"'.encode(): pid for pid in promotions}
    found: set[str] = set()
    for name in tree.listdir("evidence"):
        if not name.endswith(".json") or name.endswith(".sigstore.json"):
            continue
        raw = tree.read(f"evidence/{name}") or b""
        hits = [pid for needle, pid in needles.items() if needle in raw and pid not in found]
        if not hits:
            continue
        try:
            predicate = json.loads(raw)["predicate"]
            promotion = predicate["promotion"]["id"]
        except (ValueError, KeyError, TypeError):
            continue
        if predicate.get("type") != "release_decision" or promotion not in hits:
            continue
        try:
            ev.keyring.verify(
                raw, tree.read(f"evidence/{name[:-5]}.sigstore.json"), source=f"evidence/{name}"
            )
        except RecordRejected:
            continue  # a statement that does not verify decides nothing
        found.add(promotion)
    return found


def _check_signer(signer: Signer, keys: TrustedKeys | None) -> None:
    """Refuse to sign with a key the policy does not hold: nothing it signed would verify."""
    hint = getattr(signer, "hint", None)
    if keys is None or not isinstance(hint, str) or hint in keys:
        return
    sources = ", ".join(k.source for k in keys.values()) or "none"
    raise InvalidInput(
        f"the signing key (hint {hint}) is not an evidence key of the policy this record must verify "
        f"under (its keys: {sources}); add its public half to trust/evidence-keys/ through a ratified "
        "policy change first, and keep the old key until the change is ratified"
    )


def _message(result: PassResult, branch: str) -> str:
    parts = []
    if result.ratification:
        parts.append("policy ratified")
    if result.recorded:
        parts.append(f"{len(result.recorded)} decision(s)")
    if result.locked:
        parts.append(f"{len(result.locked)} release lock(s)")
    lines = [f"stella: {', '.join(parts) or 'update'} from {branch}@{result.source_commit[:12]}", ""]
    lines += [f"{o.promotion_id}: {o.decision.result} {o.evidence}" for o in result.recorded if o.decision]
    lines += [f"release {lock.name}: {lock.id}" for lock in result.locked]
    if result.ratification:
        lines += [f"policy {result.policy}: ratified by {result.ratification}"]
    lines += ["", f"Stella-Source-Commit: {result.source_commit}"]
    return "\n".join(lines) + "\n"


def run(
    one_pass: Callable[[], PassResult],
    *,
    interval: float,
    report: Callable[[PassResult], None],
    on_error: Callable[[StellaError], None],
) -> int:
    """Run `one_pass` now and every `interval` seconds until SIGINT/SIGTERM (APScheduler).

    Passes never overlap (max_instances=1) and missed runs coalesce. A pass that fails is reported
    and the schedule goes on; the next pass starts from whatever is on the branches then.
    """
    scheduler = BlockingScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": max(1, int(interval))}
    )

    def job() -> None:
        try:
            report(one_pass())
        except StellaError as exc:
            on_error(exc)
        except OSError as exc:  # the output went away (a closed pipe, a full disk): stop, do not spin
            log.error("cannot report the pass (%s): stopping", exc)
            threading.Thread(target=scheduler.shutdown, kwargs={"wait": False}, daemon=True).start()
            raise

    def stop(signum: int, frame: object) -> None:
        log.info("signal %d: stopping after the current pass", signum)
        threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler.add_job(job, "interval", seconds=interval, next_run_time=datetime.now(UTC), id="reconcile")
    scheduler.start()
    return 0
