"""Limits, not feature gates: each hard limit stops with a message naming it and its usage."""

from __future__ import annotations

from pathlib import Path

from tests.support.pipeline import RELEASE_130, example_workspace, promotion
from tests.support.repos import commit_all, write_files

QA = "apiVersion: stella/v1\nkind: Environment\nname: qa\n"


def _limits(ws_root: Path, limits: str) -> None:
    text = (ws_root / "stella.yaml").read_text()
    start = text.index("limits:")
    (ws_root / "stella.yaml").write_text(text[:start] + limits)


def test_environment_limit_is_a_validation_error(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    _limits(ws.root, "limits:\n  environments: {hard: 2, soft: 1}\n")
    run = ws.stella("validate")
    assert run.code == 2
    assert "stella.yaml:12: limits.environments: 3 environments, over the hard limit of 2" in run.out


def test_deployments_per_day(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    _limits(ws.root, "limits:\n  deploymentsPerDay: {hard: 1}\n")
    write_files(
        ws.root, {"environments/qa.yaml": QA, "promotions/shop-1.4.0--qa.yaml": promotion("shop-1.4.0", "qa")}
    )
    commit_all(ws.root, "two promotions, one deployment a day")
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.err
    decisions = {d["promotion"]: d for d in run.json()["decisions"]}
    assert decisions["shop-1.4.0--dev"]["decision"] == "allow"
    waiting = decisions["shop-1.4.0--qa"]
    assert waiting["decision"] == "pending"
    quota = next(g for g in waiting["gates"] if g["gate"] == "quota")
    assert quota["reason"] == "quota-exceeded"
    assert quota["message"].startswith("limits.deploymentsPerDay: 1 of 1 used today (UTC); waits until ")
    assert quota["retryAt"].endswith("T00:00:00Z")
    usage = ws.stella("usage", "-o", "json")
    assert usage.code == 0
    rows = {r["limit"]: r for r in usage.json()["limits"]}
    assert rows["deploymentsPerDay"] == {
        "limit": "deploymentsPerDay",
        "used": 1,
        "soft": None,
        "hard": 1,
        "state": "at-limit",
    }


def test_new_digests_per_day(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    _limits(ws.root, "limits:\n  newDigestsPerDay: {hard: 3, soft: 1}\n")
    write_files(
        ws.root,
        {
            "releases/shop-1.3.0.yaml": RELEASE_130,
            "promotions/shop-1.3.0--dev.yaml": promotion("shop-1.3.0", "dev"),
        },
    )
    commit_all(ws.root, "a second release")
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.err
    body = run.json()
    assert [lock["name"] for lock in body["locked"]] == ["shop-1.3.0"]
    assert body["limits"] == [
        "warning: limits.newDigestsPerDay: 2 of 3 used today, over the soft limit of 1",
        "release shop-1.4.0 not locked: limits.newDigestsPerDay: 2 of 3 used today (UTC) and it adds 2; "
        "it will be locked on a later day",
    ]
    decisions = {d["promotion"]: d for d in body["decisions"]}
    assert decisions["shop-1.3.0--dev"]["decision"] == "allow"
    assert decisions["shop-1.4.0--dev"]["decision"] == "pending"
    assert decisions["shop-1.4.0--dev"]["gates"][0]["reason"] == "quota-new-digests"
    text = ws.stella("reconcile", "--once")
    assert "limit: release shop-1.4.0 not locked: limits.newDigestsPerDay: 2 of 3" in text.out
