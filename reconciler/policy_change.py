"""Judging a change of the policy: each vote, separation of duties, and the verdict (DESIGN §8).

A change of the governed files on the branch counts only once the ratified policy's `governance:`
approves it: approvals under `approvals/policy-<hex>/`, from commits signed by keys of the ratified
`trust/allowed_signers`, by members of the governance groups, and -- with separation of duties -- not by
the signers of the commits that changed governed files. `judge_change` is pure; `votes_of` and
`change_authors` read who signed what from Git through `repo.py`. Nothing here writes or prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import Problem
from .governance import GOVERNED_DIRS, GOVERNED_FILES, Policy
from .models import Governance, Groups, PolicyApproval, Settings
from .protocols import Actor
from .repo import CommitInfo, Repo

# --- judging a policy change -----------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyVote:
    """One file under `approvals/policy-<hex>/`, with the verified signer of the commit that wrote it."""

    identity: str
    approval: PolicyApproval
    signer: Actor
    payload: bytes | None = None
    signature: bytes | None = None


@dataclass(frozen=True)
class JudgedVote:
    vote: PolicyVote
    counts: bool
    code: str = "counted"
    message: str = ""


@dataclass
class PolicyChange:
    """A policy on the branch that differs from the ratified one, and where its ratification stands.

    `state`: `ratify` (enough approvals: the next pass ratifies it), `pending` (approvals missing),
    `rejected` (a counted reject), `blocked` (it cannot be ratified as it is: invalid, no governance,
    or authors unknown under separation of duties).
    """

    ratified: str
    proposed: str | None
    changed: list[str]
    state: Literal["ratify", "pending", "rejected", "blocked"]
    reason: str
    message: str
    required: int = 0
    approvers: list[str] = field(default_factory=list)
    votes: list[JudgedVote] = field(default_factory=list)
    authors: list[str] = field(default_factory=list)
    can_approve: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "ratified": self.ratified,
            "proposed": self.proposed,
            "changed": self.changed,
            "state": self.state,
            "reason": self.reason,
            "message": self.message,
            "required": self.required,
            "approvers": self.approvers,
            "authors": self.authors,
            "canApprove": self.can_approve,
            "approvals": [
                {
                    "identity": j.vote.identity,
                    "decision": j.vote.approval.decision,
                    "comment": j.vote.approval.comment,
                    "commit": j.vote.signer.commit,
                    "signer": j.vote.signer.identity,
                    "counted": j.counts,
                    "reason": j.code,
                    "message": j.message,
                }
                for j in self.votes
            ],
            "problems": [p.as_dict() for p in self.problems],
        }


def judge_vote(
    vote: PolicyVote, proposed: str, governance: Governance, members: set[str], authors: set[str]
) -> JudgedVote:
    """Whether one policy approval counts for ratifying `proposed`."""
    who, signer = vote.identity, vote.signer
    if vote.approval.policy != proposed:
        return JudgedVote(vote, False, "policy-mismatch", f"{who} approved policy {vote.approval.policy}")
    if not signer.verified:
        return JudgedVote(vote, False, signer.code or "bad-signature", f"{who}: {signer.reason}")
    if signer.identity != who:
        return JudgedVote(
            vote,
            False,
            "identity-mismatch",
            f"the file names {who} but its commit is signed by {signer.identity}",
        )
    if who not in members:
        groups = ", ".join(governance.groups)
        return JudgedVote(vote, False, "not-in-group", f"{who} is not in the governance groups ({groups})")
    if governance.separationOfDuties and who in authors:
        return JudgedVote(vote, False, "self-approval", f"{who} changed governed files and cannot approve it")
    return JudgedVote(vote, True)


def judge_change(
    *,
    ratified: str,
    proposed: Policy | None,
    changed: Sequence[str],
    settings: Settings,
    groups: Groups,
    votes: Iterable[PolicyVote],
    authors: Sequence[str],
    unverified_authors: Sequence[str],
    problems: Sequence[Problem] = (),
    fixed_ref: str | None = None,
) -> PolicyChange:
    """Where the ratification of `proposed` stands under the ratified `settings` and `groups` (PURE)."""
    change = PolicyChange(
        ratified,
        proposed.id if proposed else None,
        list(changed),
        "blocked",
        "",
        "",
        authors=sorted(authors),
        problems=list(problems),
    )
    if proposed is None or problems:
        change.reason, change.message = (
            "invalid",
            "the proposed policy does not load: " + "; ".join(str(p) for p in problems),
        )
        return change
    governance = settings.governance
    if governance is None:
        change.reason = "no-governance"
        change.message = (
            "the ratified stella.yaml has no `governance:` section, so nobody can ratify a policy change"
        )
        return change
    if fixed_ref is not None:
        change.reason = "evidence-ref-fixed"
        change.message = (
            f"the change moves evidence.ref to {fixed_ref}; the evidence ref is fixed by the genesis "
            "(a new ref needs a new genesis)"
        )
        return change
    members = {m for g in governance.groups for m in groups.groups.get(g, [])}
    judged = [
        judge_vote(v, proposed.id, governance, members, set(authors))
        for v in sorted(votes, key=lambda v: v.identity)
    ]
    change.votes = judged
    change.required = governance.required
    change.approvers = sorted(
        j.vote.identity for j in judged if j.counts and j.vote.approval.decision == "approve"
    )
    rejecters = sorted(j.vote.identity for j in judged if j.counts and j.vote.approval.decision == "reject")
    answered = set(change.approvers) | set(rejecters)
    excluded = set(authors) if governance.separationOfDuties else set()
    change.can_approve = sorted(members - answered - excluded)
    if rejecters:
        change.state, change.reason = "rejected", "rejected"
        change.message = f"policy change rejected by {', '.join(rejecters)}"
        return change
    if governance.separationOfDuties and unverified_authors:
        commits = ", ".join(c[:12] for c in unverified_authors[:5])
        change.reason = "author-unverified"
        change.message = (
            f"separation of duties needs every author of the change known, but commit(s) {commits} "
            "changing governed files are not signed by a key of the ratified trust/allowed_signers"
        )
        return change
    if len(change.approvers) >= governance.required:
        change.state, change.reason = "ratify", "approved"
        change.message = f"approved by {', '.join(change.approvers)}"
        return change
    change.state, change.reason = "pending", "awaiting-approvals"
    have = f"{len(change.approvers)} of {governance.required} approval(s)"
    can = (
        f"; can approve: {', '.join(change.can_approve)}"
        if change.can_approve
        else "; nobody else can approve"
    )
    change.message = f"policy change {proposed.id[:19]}… needs approvals: {have}{can}"
    return change


# --- reading a change's approvals and authors from Git --------------------------------------------


def votes_of(
    repo: Repo,
    commit: str,
    approvals: Mapping[str, PolicyApproval],
    actor: Callable[[CommitInfo], Actor],
    directory: str,
) -> list[PolicyVote]:
    """Each policy approval file with the verified signer of the commit that last wrote it."""
    votes = []
    for identity, approval in sorted(approvals.items()):
        info = repo.last_writer(commit, f"{directory}/{identity}.yaml")
        signer = actor(info) if info else Actor(None, reason="not in history", code="unsigned")
        votes.append(
            PolicyVote(
                identity,
                approval,
                signer,
                payload=info.signed_payload if info else None,
                signature=info.signature if info else None,
            )
        )
    return votes


def change_authors(
    repo: Repo, head: str, since: str | None, actor: Callable[[CommitInfo], Actor], limit: int = 10000
) -> tuple[list[str], list[str]]:
    """(verified signers, ids of unverified commits) of the commits reachable from `head` but not from
    `since` that changed governed files (a merge that only brings one side's files is not counted)."""
    signers: set[str] = set()
    unverified: list[str] = []
    for commit_id in repo.governed_changes(head, since, GOVERNED_FILES + GOVERNED_DIRS, limit=limit):
        who = actor(repo.commit_info(commit_id))
        if who.verified and who.identity:
            signers.add(who.identity)
        else:
            unverified.append(commit_id)
    return sorted(signers), unverified
