"""`stella demo` runs the whole flow offline and every step does what it says."""

from __future__ import annotations

from tests.support.cli import stella


def test_demo_runs_every_step() -> None:
    run = stella("demo", "-o", "json")
    assert run.code == 0, run.err
    steps = run.json()
    assert [s["ok"] for s in steps] == [True] * len(steps)
    titles = [s["title"] for s in steps]
    assert titles[0] == "A Git repository like yours"
    verify = "Verify the evidence branch offline, from the pinned genesis"
    assert verify in titles
    by_title = {s["title"]: s["lines"] for s in steps}
    assert any(line.startswith("shop-1.4.0--dev: allow -> evidence sha256:") for line in by_title[titles[2]])
    staging = by_title["Merge (a merge commit keeps the signatures) and reconcile"]
    if any("freeze-window: frozen:" in line for line in staging):  # the weekend freeze of staging
        assert staging[0] == "shop-1.4.0--staging: pending"
    else:
        assert staging[0].startswith("shop-1.4.0--staging: allow -> evidence sha256:")
        assert "  pass    approvals: approved: approved by release-manager@example.com" in staging
    assert by_title[titles[2]][0].startswith("genesis: policy sha256:")
    change = by_title["Change the policy: a contributor makes themselves an approver"]
    assert change[0].startswith("policy change sha256:") and ": pending: " in change[0]
    assert change[1:] == ["  changed: trust/groups.yaml"]
    ratified = by_title["A policy admin approves the change, and the next pass ratifies it"]
    assert ratified[0].startswith("policy sha256:") and " ratified by sha256:" in ratified[0]
    assert by_title[verify][0].startswith("OK: ") and "2 ratified polic(ies)" in by_title[verify][0]
    tampered = by_title["Tamper with a statement, and verify again"]
    assert any("changed after it was written" in line for line in tampered)
