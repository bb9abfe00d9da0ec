"""`valid-after`/`valid-before` in `trust/allowed_signers` apply at the signed commit's time.

A release manager whose key was valid until 2026-01-01 approved in 2025: the approval keeps counting
after the key expired (as `git verify-commit` judges it), and `audit verify` re-checks it at that time
too. An approval signed after the key expired does not count.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support.pipeline import Workspace, example_workspace
from tests.support.repos import commit_all, git, write_files
from tests.support.ssh import Person, person

PROMOTION = "shop-1.4.0--staging"


def _signed(ws: Workspace, who: Person, date: str, *args: str) -> str:
    env = {**who.git_env(), "GIT_COMMITTER_DATE": date, "GIT_AUTHOR_DATE": date}
    argv = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={who.key}", *args]
    done = subprocess.run(
        ["git", *argv],
        cwd=ws.root,
        env={**os.environ, **env, "HOME": str(ws.root)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return git(ws.root, "rev-parse", "HEAD")


def _approvals_gate(ws: Workspace, approved_on: str) -> dict[str, object]:
    keys = ws.root.parent / "ssh"
    requester = person(keys, "requester@example.com")
    manager = person(keys, "release-manager@example.com")
    write_files(
        ws.root,
        {
            "trust/allowed_signers": requester.allowed_signers_line()
            + f'{manager.identity} namespaces="git",valid-before="20260101" {manager.public}\n'
        },
    )
    commit_all(ws.root, "trust the requester, and the release manager until 2026")
    assert ws.stella("reconcile", "--once").code == 0  # genesis; dev allowed
    lock = json.loads(ws.show("releases/shop-1.4.0.json"))
    write_files(
        ws.root,
        {
            "promotions/shop-1.4.0--staging.yaml": "apiVersion: stella/v1\nkind: Promotion\nrelease: shop-1.4.0\nenvironment: staging\n"
        },
    )
    git(ws.root, "add", "-A")
    _signed(ws, requester, "2025-06-01T10:00:00Z", "commit", "-q", "-S", "-m", "request staging")
    approval = (
        f"apiVersion: stella/v1\nkind: Approval\npromotion: {PROMOTION}\nrelease: {lock['id']}\n"
        "environment: staging\ndecision: approve\n"
    )
    write_files(ws.root, {f"approvals/{PROMOTION}/{manager.identity}.yaml": approval})
    git(ws.root, "add", "-A")
    _signed(ws, manager, approved_on, "commit", "-q", "-S", "-m", "approve staging")
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.err
    (decision,) = [d for d in run.json()["decisions"] if d["promotion"] == PROMOTION]
    gate: dict[str, object] = next(g for g in decision["gates"] if g["gate"] == "approvals")
    return gate


def test_an_approval_signed_while_the_key_was_valid_counts_after_it_expired(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    gate = _approvals_gate(ws, "2025-06-02T10:00:00Z")
    assert (gate["status"], gate["reason"]) == ("pass", "approved")
    assert ws.stella("audit", "verify").code == 0


def test_an_approval_signed_after_the_key_expired_does_not_count(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    gate = _approvals_gate(ws, "2026-02-01T10:00:00Z")
    assert (gate["status"], gate["reason"]) == ("pending", "awaiting-approvals")
    ignored = gate["facts"]["ignored"]  # type: ignore[index]
    assert [(i["identity"], i["reason"]) for i in ignored] == [("release-manager@example.com", "unknown-key")]
