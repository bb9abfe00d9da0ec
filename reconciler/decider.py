"""Deciding and recording the open promotions of one pass.

`Decider` holds what one attempt of a pass has read (the repository under the ratified policy, the
evidence index, the release locks) and what it adds (files, statements to sign, pointers). For each open
promotion it gathers the inputs (who requested it, each approval with its verified signer, the history
of earlier environments, the gate plan), decides through the one seam of `decision` -- the gate context
is built from the recorded inputs, as replay builds it -- and, for allow and deny, renders the compose
lock and builds the statement and inputs files. Reads Git through `repo.py`; writes nothing itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import render
from .decision import (
    Gathered,
    decide_inputs,
    encode_signed,
    gather_inputs,
    history_environments,
    input_actor,
)
from .discover import Plugins
from .evidence import canonical, decision_statement, pointer, sha256_hex
from .gates.quota import day_start
from .governance import Policy, PolicyView, policy_keys
from .history import EvidenceIndex, Record
from .identity import Verifier
from .ledger import artifact_path, evidence_path, inputs_path, rfc3339
from .models import Environment, InputActor, InputGate, ReleaseLock, Repository
from .policy import CORE_GATES, Decision
from .protocols import Actor, ApprovalRecord, GateResult, Registry
from .reference import ImageRef
from .repo import CommitInfo, Repo
from .results import Outcome
from .sign import TrustedKeys
from .version import __version__

ALLOWED_SIGNERS = "trust/allowed_signers"
MIN_SECRET_LENGTH = 6
"""Secret values shorter than this are not searched for in rendered files (too many false alarms)."""


@dataclass
class Decider:
    """The working state of one attempt: the evidence as read, and what this attempt adds to it."""

    repo: Repo
    plugins: Plugins
    repository: Repository
    source: PolicyView
    """The repository at the source commit, governed files served from the ratified policy."""
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
    registries: Callable[[ImageRef], Registry] | None = None
    """The registries the pass opened from `stella.yaml`, for gates that read them (`ctx.registries`)."""
    verifier: Verifier = field(init=False)

    def __post_init__(self) -> None:
        self.verifier = Verifier(self.source.read(ALLOWED_SIGNERS), ALLOWED_SIGNERS)

    def actor(self, info: CommitInfo) -> Actor:
        self.infos[info.id] = info
        return self.verifier.actor(info)

    def input_actor(self, actor: Actor) -> InputActor:
        info = self.infos.get(actor.commit or "")
        payload, signature = encode_signed(info.signed_payload, info.signature) if info else (None, None)
        return input_actor(actor, payload, signature)

    def gate_plan(self, environment: Environment) -> tuple[InputGate, ...]:
        """The gates to run for `environment`, as recorded: the core gates, then the environment's,
        with their options (the quota gate's include today's count) and the installed versions."""
        wanted: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in CORE_GATES]
        limit = self.repository.settings.limits.deploymentsPerDay
        if limit is not None:
            used = self.index.allowed_since(day_start(self.now))
            quota = {"deploymentsPerDay": limit.model_dump(), "deploymentsToday": used}
            wanted = [(name, quota if name == "quota" else options) for name, options in wanted]
        wanted += [(g.plugin, g.options) for g in environment.gates]
        planned = []
        for name, options in wanted:
            gate = self.plugins.gates.get(name)
            version = gate.manifest.version if gate is not None else ""
            planned.append(InputGate(name=name, version=version, options=options))
        return tuple(planned)

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
        history = tuple(
            prior
            for name in history_environments(promotion, environment)
            for prior in self.index.priors(name, lock.id)
        )
        template_info = None
        if environment.template:
            raw = self.source.read(environment.template) or b""
            template_info = {"path": environment.template, "sha256": sha256_hex(raw)}
        gathered = Gathered(
            requester=requester,
            requested_at=requested_at,
            approvals=approvals,
            history=history,
            gates=self.gate_plan(environment),
            groups={name: tuple(members) for name, members in self.repository.groups.groups.items()},
            template=template_info,
        )
        outcome.inputs = gather_inputs(
            gathered,
            tenant=self.repository.settings.tenant,
            source_commit=self.repository.commit or "",
            promotion_id=promotion_id,
            promotion=promotion,
            release=lock,
            environment=environment,
            decided_at=self.now,
            policy=self.policy.id if self.policy else None,
            signed=self.input_actor,
        )
        outcome.decision, _ = decide_inputs(
            outcome.inputs,
            self.source,
            self.plugins,
            mirror=self.repository.settings.mirror,
            offline=self.offline,
            extra={"registries": self.registries},
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
            promotion={
                "reason": promotion.reason,
                "commit": requester.commit,
                **({"rollback": True} if promotion.rollback else {}),
            },
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
        "decidedAt": rfc3339(record.decided_at),
        "artifacts": record.artifacts,
    }
