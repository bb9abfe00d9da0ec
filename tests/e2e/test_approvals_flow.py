"""The pull-request flow with real SSH keys: a requester, two approvers, a merge commit, a decision."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.pipeline import Workspace, example_workspace
from tests.support.repos import commit_all, write_files
from tests.support.ssh import Person, allowed_signers, person

PROD = """\
apiVersion: stella/v1
kind: Environment
name: prod
approvals: {required: 2, groups: [release-managers], separationOfDuties: true}
template: templates/shop.compose.yml.j2
"""
PROMOTION = "shop-1.4.0--prod"


@pytest.fixture
def team(tmp_path: Path) -> dict[str, Person]:
    keys = tmp_path / "ssh"
    return {
        role: person(keys, f"{role}@example.com")
        for role in ("requester", "release-manager", "platform-lead", "outsider")
    }


def _setup(tmp_path: Path, team: dict[str, Person]) -> Workspace:
    ws = example_workspace(tmp_path)
    trusted = [team["requester"], team["release-manager"], team["platform-lead"]]
    write_files(
        ws.root,
        {
            "environments/prod.yaml": PROD,
            "trust/allowed_signers": allowed_signers(*trusted),
            "trust/groups.yaml": "apiVersion: stella/v1\nkind: Groups\ngroups:\n  release-managers: "
            "[requester@example.com, release-manager@example.com, platform-lead@example.com]\n",
        },
    )
    commit_all(ws.root, "prod needs two approvals")
    return ws


def _as(ws: Workspace, who: Person, *args: str) -> tuple[int, str, str]:
    run = ws.stella(*args, env=who.git_env())
    return run.code, run.out, run.err


def _approve(ws: Workspace, who: Person, *extra: str) -> str:
    code, _, err = _as(
        ws, who, "approve", PROMOTION, "--key", str(who.key), "--identity", who.identity, *extra
    )
    assert code == 0, err
    return ws.git("rev-parse", "HEAD")


def _verify_commit(ws: Workspace, commit: str, signers: str) -> str:
    allowed = ws.root.parent / "allowed_signers"
    allowed.write_text(signers)
    done = subprocess.run(
        ["git", "-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", "-v", commit],
        cwd=ws.root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_request_two_approvals_merge_allow(tmp_path: Path, team: dict[str, Person]) -> None:
    ws = _setup(tmp_path, team)
    requester = team["requester"]
    ws.git("config", "user.email", requester.identity)
    ws.git("config", "gpg.format", "ssh")
    ws.git("config", "user.signingkey", str(requester.key))
    code, _, err = _as(ws, requester, "promote", "shop-1.4.0", "--to", "prod", "--reason", "rounding fix")
    assert code == 0, err
    request = ws.git("rev-parse", f"promote/{PROMOTION}")
    signers = allowed_signers(team["requester"], team["release-manager"], team["platform-lead"])
    assert 'Good "git" signature for requester@example.com' in _verify_commit(ws, request, signers)
    ws.git("config", "--unset", "user.signingkey")
    ws.git("config", "--unset", "gpg.format")

    ws.git("checkout", "-q", f"promote/{PROMOTION}")
    why = ws.stella("why", PROMOTION, "-o", "json")  # not on main yet: explained at HEAD
    assert (why.code, why.json()["decision"], why.json()["recorded"]) == (1, "pending", False)
    plan = ws.stella("plan", "--base", "main", "-o", "markdown")
    assert plan.code == 1
    assert (
        "0 of 2 approval(s); can approve: platform-lead@example.com, release-manager@example.com" in plan.out
    )

    first = _approve(ws, team["release-manager"], "--comment", "looks good")
    second = _approve(ws, team["platform-lead"])
    for commit, who in ((first, "release-manager"), (second, "platform-lead")):
        assert f'Good "git" signature for {who}@example.com' in _verify_commit(ws, commit, signers)
    assert ws.stella("plan", "--base", "main").code == 0

    ws.git("checkout", "-q", "main")
    ws.git("merge", "-q", "--no-ff", "-m", f"Merge promote/{PROMOTION}", f"promote/{PROMOTION}")
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.err
    decisions = {d["promotion"]: d for d in run.json()["decisions"]}
    assert decisions[PROMOTION]["decision"] == "allow"
    gate = next(g for g in decisions[PROMOTION]["gates"] if g["gate"] == "approvals")
    assert (gate["status"], gate["reason"]) == ("pass", "approved")
    assert gate["message"] == "approved by platform-lead@example.com, release-manager@example.com"

    evidence = decisions[PROMOTION]["evidence"].removeprefix("sha256:")
    actors = json.loads(ws.show(f"evidence/{evidence}.json"))["predicate"]["actors"]
    fingerprint = {
        p.identity: subprocess.run(
            ["ssh-keygen", "-lf", f"{p.key}.pub"], capture_output=True, text=True, check=True
        ).stdout.split()[1]
        for p in team.values()
    }
    assert actors["requester"]["identity"] == "requester@example.com"
    assert actors["requester"]["verified"] is True
    assert actors["requester"]["commit"] == request
    assert actors["requester"]["key"] == fingerprint["requester@example.com"]
    approvers = {a["identity"]: a for a in actors["approvers"]}
    assert set(approvers) == {"release-manager@example.com", "platform-lead@example.com"}
    manager = approvers["release-manager@example.com"]
    assert (manager["decision"], manager["comment"], manager["commit"]) == ("approve", "looks good", first)
    assert manager["key"] == fingerprint["release-manager@example.com"]
    assert manager["verified"] is True and manager["counted"] is True and manager["time"]
    assert approvers["platform-lead@example.com"]["commit"] == second
    assert ws.stella("audit", "verify").code == 0


def test_forged_approval_never_counts(tmp_path: Path, team: dict[str, Person]) -> None:
    ws = _setup(tmp_path, team)
    ws.git("config", "user.email", "requester@example.com")
    assert _as(ws, team["requester"], "promote", "shop-1.4.0", "--to", "prod")[0] == 0
    ws.git("checkout", "-q", f"promote/{PROMOTION}")
    _approve(ws, team["release-manager"])
    # the release manager writes a second approval in the platform lead's name, signed with their own key
    code, _, err = _as(
        ws,
        team["release-manager"],
        "approve",
        PROMOTION,
        "--key",
        str(team["release-manager"].key),
        "--identity",
        "platform-lead@example.com",
    )
    assert code == 0, err
    why = ws.stella("plan", "-o", "json")
    (decision,) = [d for d in why.json()["decisions"] if d["promotion"] == PROMOTION]
    gate = next(g for g in decision["gates"] if g["gate"] == "approvals")
    assert gate["status"] == "pending"
    assert gate["facts"]["approvers"] == ["release-manager@example.com"]
    assert gate["facts"]["ignored"] == [
        {
            "identity": "platform-lead@example.com",
            "reason": "identity-mismatch",
            "message": "the approval file names platform-lead@example.com but its commit is signed by "
            "release-manager@example.com",
        }
    ]
    # the request itself is unsigned: with separation of duties that alone keeps the promotion waiting
    assert (gate["reason"], gate["message"]) == (
        "requester-unverified",
        f"separation of duties needs a verified requester: commit {ws.git('rev-parse', 'HEAD~2')[:12]} is not signed",
    )


def test_approve_needs_a_key(tmp_path: Path, team: dict[str, Person]) -> None:
    ws = _setup(tmp_path, team)
    ws.git("config", "user.email", "requester@example.com")
    assert _as(ws, team["requester"], "promote", "shop-1.4.0", "--to", "prod")[0] == 0
    ws.git("checkout", "-q", f"promote/{PROMOTION}")
    code, _, err = _as(ws, team["release-manager"], "approve", PROMOTION)
    assert code == 2
    assert "approvals must be SSH-signed" in err
