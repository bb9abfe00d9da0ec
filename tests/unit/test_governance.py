"""The policy, its id, the overlay decisions read, stored policies, and judging a policy change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import rfc8785

from reconciler.errors import InvalidInput, Problem
from reconciler.governance import (
    Policy,
    PolicyError,
    PolicyView,
    governed_files,
    is_governed,
    signing_policy,
    stored_policy,
)
from reconciler.models import Governance, Groups, PolicyApproval, Settings
from reconciler.policy_change import PolicyVote, judge_change
from reconciler.protocols import Actor
from reconciler.repo import Repo
from tests.support.repos import make_repo

FILES = {
    "stella.yaml": b"apiVersion: stella/v1\nkind: Settings\ntenant: shop\n",
    "environments/dev.yaml": b"apiVersion: stella/v1\nkind: Environment\nname: dev\n",
    "trust/groups.yaml": b"apiVersion: stella/v1\nkind: Groups\ngroups: {}\n",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_policy_id_is_the_hash_of_the_canonical_file_list() -> None:
    policy = Policy.of(FILES)
    listing = {path: f"sha256:{_sha(data)}" for path, data in FILES.items()}
    assert policy.manifest == listing
    assert policy.id == "sha256:" + _sha(rfc8785.dumps(listing))
    stored = policy.stored_files()
    assert stored[f"policies/{policy.hex}.json"] == rfc8785.dumps(listing)
    assert all(stored[f"policy-files/{_sha(data)}"] == data for data in FILES.values())


@pytest.mark.parametrize(
    ("path", "governed"),
    [
        ("stella.yaml", True),
        ("environments/prod.yaml", True),
        ("templates/shop.compose.yml.j2", True),
        ("trust/allowed_signers", True),
        ("trust/evidence-keys/ci.pub", True),
        ("releases/shop-1.0.0.yaml", False),
        ("promotions/shop-1.0.0--dev.yaml", False),
        ("approvals/shop-1.0.0--dev/a@example.com.yaml", False),
        ("mirror/reports/x.json", False),
        ("stella.yaml.bak", False),
        ("trustee/x", False),
    ],
    ids=lambda v: str(v),
)
def test_governed_paths(path: str, governed: bool) -> None:
    assert is_governed(path) is governed


def test_the_view_serves_governed_files_from_the_policy_and_the_rest_from_the_commit(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path / "repo",
        {
            "stella.yaml": "apiVersion: stella/v1\nkind: Settings\ntenant: other\n",
            "environments/evil.yaml": "apiVersion: stella/v1\nkind: Environment\nname: evil\n",
            "promotions/p.yaml": "x: 1\n",
        },
    )
    repo = Repo(root)
    source = repo.tree(repo.resolve_ref("main") or "")
    view = PolicyView(Policy.of(FILES), source)
    assert view.read("stella.yaml") == FILES["stella.yaml"]
    assert view.read("environments/evil.yaml") is None
    assert view.listdir("environments") == ["dev.yaml"]
    assert view.read("promotions/p.yaml") == b"x: 1\n"
    assert view.listdir("") == ["environments", "promotions", "stella.yaml", "trust"]
    assert view.isdir("trust") and not view.isdir("templates")
    assert governed_files(source) == {
        "environments/evil.yaml": b"apiVersion: stella/v1\nkind: Environment\nname: evil\n",
        "stella.yaml": b"apiVersion: stella/v1\nkind: Settings\ntenant: other\n",
    }


class _Files:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def read(self, path: str) -> bytes | None:
        return self.files.get(path)

    def listdir(self, path: str) -> list[str]:
        return []


def test_a_stored_policy_is_checked_against_every_hash() -> None:
    policy = Policy.of(FILES)
    stored = policy.stored_files()
    assert stored_policy(_Files(stored), policy.id).files == dict(sorted(FILES.items()))
    tampered = dict(stored)
    tampered[f"policy-files/{_sha(FILES['stella.yaml'])}"] = b"tenant: evil\n"
    with pytest.raises(PolicyError, match="does not hash to its name"):
        stored_policy(_Files(tampered), policy.id)
    missing = {k: v for k, v in stored.items() if not k.startswith("policies/")}
    with pytest.raises(PolicyError, match="missing from the evidence branch"):
        stored_policy(_Files(missing), policy.id)
    outside = Policy.of({**FILES, "releases/x.yaml": b"x"})
    with pytest.raises(PolicyError, match="not a governed file"):
        stored_policy(_Files(outside.stored_files()), outside.id)


P1, P2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


@pytest.mark.parametrize(
    ("predicate", "expected"),
    [
        ({"type": "release_decision", "policy": {"id": P1}}, P1),
        ({"type": "release_decision"}, None),
        ({"type": "policy_ratification", "policy": {"id": P2, "previous": P1}}, P1),
        ({"type": "policy_ratification", "policy": {"id": P1, "previous": None}}, P1),
        ({"type": "release_decision", "policy": {"id": "sha256:short"}}, "bad"),
    ],
    ids=["decision", "legacy", "ratification", "genesis", "malformed"],
)
def test_which_policy_signs_a_statement(predicate: dict[str, object], expected: str | None) -> None:
    found = signing_policy(json.dumps({"predicate": predicate}).encode())
    if expected == "bad":
        assert found is not None and not isinstance(found, str)  # not a Stella statement
    else:
        assert found == expected


SETTINGS = Settings(
    apiVersion="stella/v1",
    kind="Settings",
    tenant="shop",
    governance=Governance(required=2, groups=["admins"], separationOfDuties=True),
)
GROUPS = Groups(apiVersion="stella/v1", kind="Groups", groups={"admins": ["a@x.io", "b@x.io", "c@x.io"]})
PROPOSED = Policy.of({**FILES, "trust/allowed_signers": b"new"})


def vote(
    who: str, decision: str = "approve", *, signer: str | None = None, policy: str | None = None
) -> PolicyVote:
    approval = PolicyApproval(
        apiVersion="stella/v1",
        kind="Approval",
        policy=policy or PROPOSED.id,
        decision=decision,  # type: ignore[arg-type]
    )
    actor = (
        Actor(signer or who, commit="c" * 40, verified=True)
        if signer != ""
        else Actor(None, code="unsigned", reason="commit is not signed")
    )
    return PolicyVote(who, approval, actor)


# (votes, authors, unverified authors, state, reason, approvers, can approve, ignored codes)
CHANGES = {
    "two-admins": (
        [vote("a@x.io"), vote("b@x.io")],
        [],
        [],
        "ratify",
        "approved",
        ["a@x.io", "b@x.io"],
        ["c@x.io"],
        {},
    ),
    "one-of-two": (
        [vote("a@x.io")],
        [],
        [],
        "pending",
        "awaiting-approvals",
        ["a@x.io"],
        ["b@x.io", "c@x.io"],
        {},
    ),
    "author-cannot-approve": (
        [vote("a@x.io"), vote("b@x.io")],
        ["a@x.io"],
        [],
        "pending",
        "awaiting-approvals",
        ["b@x.io"],
        ["c@x.io"],
        {"a@x.io": "self-approval"},
    ),
    "reject-blocks": (
        [vote("a@x.io"), vote("b@x.io", "reject")],
        [],
        [],
        "rejected",
        "rejected",
        ["a@x.io"],
        ["c@x.io"],
        {},
    ),
    "not-an-admin": (
        [vote("d@x.io"), vote("a@x.io")],
        [],
        [],
        "pending",
        "awaiting-approvals",
        ["a@x.io"],
        ["b@x.io", "c@x.io"],
        {"d@x.io": "not-in-group"},
    ),
    "forged-name": (
        [vote("b@x.io", signer="a@x.io"), vote("a@x.io")],
        [],
        [],
        "pending",
        "awaiting-approvals",
        ["a@x.io"],
        ["b@x.io", "c@x.io"],
        {"b@x.io": "identity-mismatch"},
    ),
    "unsigned": (
        [vote("a@x.io", signer=""), vote("b@x.io")],
        [],
        [],
        "pending",
        "awaiting-approvals",
        ["b@x.io"],
        ["a@x.io", "c@x.io"],
        {"a@x.io": "unsigned"},
    ),
    "other-policy": (
        [vote("a@x.io", policy=P1), vote("b@x.io")],
        [],
        [],
        "pending",
        "awaiting-approvals",
        ["b@x.io"],
        ["a@x.io", "c@x.io"],
        {"a@x.io": "policy-mismatch"},
    ),
    "unknown-author": (
        [vote("a@x.io"), vote("b@x.io")],
        [],
        ["f" * 40],
        "blocked",
        "author-unverified",
        ["a@x.io", "b@x.io"],
        ["c@x.io"],
        {},
    ),
}


@pytest.mark.parametrize("case", CHANGES.values(), ids=CHANGES.keys())
def test_judging_a_policy_change(
    case: tuple[list[PolicyVote], list[str], list[str], str, str, list[str], list[str], dict[str, str]],
) -> None:
    votes, authors, unverified, state, reason, approvers, can, ignored = case
    change = judge_change(
        ratified=P1,
        proposed=PROPOSED,
        changed=["trust/allowed_signers"],
        settings=SETTINGS,
        groups=GROUPS,
        votes=votes,
        authors=authors,
        unverified_authors=unverified,
    )
    assert (change.state, change.reason, change.approvers, change.can_approve) == (
        state,
        reason,
        approvers,
        can,
    )
    assert {j.vote.identity: j.code for j in change.votes if not j.counts} == ignored
    assert change.required == 2 and change.changed == ["trust/allowed_signers"]


def test_without_governance_or_with_a_broken_proposal_nothing_is_ratified() -> None:
    bare = Settings(apiVersion="stella/v1", kind="Settings", tenant="shop")
    common = {
        "ratified": P1,
        "changed": [],
        "groups": GROUPS,
        "votes": [vote("a@x.io"), vote("b@x.io")],
        "authors": [],
        "unverified_authors": [],
    }
    none = judge_change(proposed=PROPOSED, settings=bare, **common)  # type: ignore[arg-type]
    assert (none.state, none.reason) == ("blocked", "no-governance")
    broken = judge_change(
        proposed=PROPOSED, settings=SETTINGS, problems=[Problem("stella.yaml", 3, "bad")], **common
    )  # type: ignore[arg-type]
    assert (broken.state, broken.reason) == ("blocked", "invalid")
    moved = judge_change(proposed=PROPOSED, settings=SETTINGS, fixed_ref="refs/heads/other", **common)  # type: ignore[arg-type]
    assert (moved.state, moved.reason) == ("blocked", "evidence-ref-fixed")


def test_the_view_refuses_to_read_a_file_over_the_data_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_repo(tmp_path / "repo", {"mirror/reports/big.json": "x" * 2048, "mirror/small.json": "{}"})
    repo = Repo(root)
    view = PolicyView(Policy.of(FILES), repo.tree(repo.resolve_ref("main") or ""))
    monkeypatch.setattr("reconciler.governance.MAX_DATA_BYTES", 1024)
    assert view.read("mirror/small.json") == b"{}"
    with pytest.raises(InvalidInput, match=r"mirror/reports/big.json: 2048 bytes, over the 1024-byte limit"):
        view.read("mirror/reports/big.json")
