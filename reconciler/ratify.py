"""Which policy a pass decides under, and the ratification it writes (DESIGN §8).

`govern` returns the ratified policy; at the first pass the branch's own policy as the genesis; and when
the branch's policy differs, how its ratification stands (`judge_change`) -- with enough approvals under
the ratified governance, the new policy is ratified in this pass, before anything is decided.
`Ratification` builds what that writes: the policy's stored files, the inputs, the statement, the pointer
and the keys that may sign it. Reads Git through `repo.py` and `governance`; writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .decision import encode_signed, input_actor
from .errors import Problem, ValidationFailed
from .evidence import canonical, sha256_hex
from .governance import (
    ALLOWED_SIGNERS,
    POLICY_CHAIN,
    RATIFICATION,
    Keyring,
    Policy,
    PolicyError,
    PolicyView,
    governed_files,
    pointer_json,
    policy_keys,
    ratification_statement,
)
from .history import EvidenceIndex, Record
from .identity import Verifier
from .ledger import POINTER, evidence_path, inputs_path
from .manifests import GROUPS_FILE, Loader, load_repository, load_settings
from .models import Groups, InputVote, RatificationInputs, Settings
from .policy_change import PolicyChange, change_authors, judge_change, votes_of
from .repo import GitTree, Repo
from .sign import TrustedKeys
from .version import __version__


@dataclass
class Governed:
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


def govern(
    repo: Repo,
    index: EvidenceIndex,
    keyring: Keyring,
    source: GitTree,
    now: datetime,
) -> tuple[Governed, Ratification]:
    """Which policy this pass decides under: the ratified one; the branch's own at a genesis; or the
    branch's when enough approvals ratify it now (DESIGN §8). Returns the ratification to write, if any."""
    pending = Ratification()
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
        governed = Governed(proposed, None, proposed, ratified_now=True)
        pending.ratify(proposed, None, None, settings, {}, [], [], "genesis", source, now)
        governed.record = pending.record
        keyring.add(proposed)
        return governed, pending
    assert ratified.policy is not None
    policy = keyring.policy(ratified.policy)
    governed = Governed(policy, ratified.evidence, proposed)
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
        governed = Governed(proposed, pending.record, proposed, change, ratified_now=True)
    return governed, pending


@dataclass
class Ratification:
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
                    signer=input_actor(j.vote.signer, *encode_signed(j.vote.payload, j.vote.signature)),
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
