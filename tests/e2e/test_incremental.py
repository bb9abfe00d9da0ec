"""The reconcile pass reads only what changed since the last pass, and decides as a full pass would."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler.discover import discover
from reconciler.history import cache_path
from reconciler.loop import reconcile
from reconciler.repo import Repo
from reconciler.sign import KeySigner, load_private_key
from tests.support.cli import STELLA
from tests.support.pipeline import RELEASE_130, Workspace, decision_records, example_workspace, promotion
from tests.support.repos import commit_all, write_files

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday, no freeze window open
NO_APPROVALS = "apiVersion: stella/v1\nkind: Environment\nname: {name}\npromotesFrom: {prior}\nsoak: 1h\n"


def _pass(ws: Workspace, now: datetime, progress: object = None) -> dict[str, str]:
    signer = KeySigner(load_private_key(ws.key))
    result = reconcile(
        Repo(ws.root),
        discover(offline=True),
        now=lambda: now,
        signer=lambda: signer,
        offline=True,
        progress=progress,  # type: ignore[arg-type]
    )
    assert not result.problems, result.problems
    return {o.promotion_id: o.decision.result for o in result.outcomes if o.decision}


def test_incremental_passes_decide_like_a_full_pass(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    write_files(
        ws.root,
        {
            "environments/qa.yaml": NO_APPROVALS.format(name="qa", prior="dev"),
            "promotions/shop-1.4.0--qa.yaml": promotion("shop-1.4.0", "qa"),
        },
    )
    commit_all(ws.root, "qa after dev, soak 1h")
    assert _pass(ws, T0) == {
        "shop-1.4.0--dev": "allow",
        "shop-1.4.0--qa": "pending",  # soaking
    }
    assert cache_path(Repo(ws.root), "refs/heads/stella/evidence").exists()
    assert _pass(ws, T0 + timedelta(minutes=30)) == {"shop-1.4.0--qa": "pending"}  # only the pending one
    assert _pass(ws, T0 + timedelta(minutes=61)) == {"shop-1.4.0--qa": "allow"}
    assert _pass(ws, T0 + timedelta(minutes=62)) == {}  # nothing to look at

    # a new promotion and release only: the incremental path
    write_files(
        ws.root,
        {
            "releases/shop-1.3.0.yaml": RELEASE_130,
            "promotions/shop-1.3.0--dev.yaml": promotion("shop-1.3.0", "dev"),
        },
    )
    commit_all(ws.root, "1.3.0 to dev")
    assert _pass(ws, T0 + timedelta(hours=2)) == {"shop-1.3.0--dev": "allow"}

    # a policy change (an environment): everything open is looked at again, under the ratified policy,
    # in which staging still needs an approval (the unratified edit that drops it does not count)
    write_files(ws.root, {"environments/staging.yaml": NO_APPROVALS.format(name="staging", prior="dev")})
    write_files(ws.root, {"promotions/shop-1.4.0--staging.yaml": promotion("shop-1.4.0", "staging")})
    commit_all(ws.root, "staging without approvals")
    assert _pass(ws, T0 + timedelta(hours=3)) == {"shop-1.4.0--staging": "pending"}

    # the cache is only a cache: without it, a full pass finds nothing new either
    before = ws.git("rev-parse", "refs/heads/stella/evidence")
    for leftover in cache_path(Repo(ws.root), "refs/heads/stella/evidence").parent.iterdir():
        leftover.unlink()
    assert _pass(ws, T0 + timedelta(hours=4)) == {"shop-1.4.0--staging": "pending"}
    assert ws.git("rev-parse", "refs/heads/stella/evidence") == before
    assert ws.stella("audit", "verify").code == 0


def test_lost_race_is_re_decided(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    calls: list[str] = []

    def meddle(message: str) -> None:
        if message.startswith("signing") and not calls:
            calls.append(message)  # another reconciler lands its commit while this pass signs
            subprocess.run(
                [STELLA, "reconcile", "--once", "--repo", str(ws.root)],
                env={**ws.env, "PATH": ""},
                check=True,
                capture_output=True,
            )

    signer = KeySigner(load_private_key(ws.key))
    result = reconcile(
        Repo(ws.root),
        discover(offline=True),
        now=lambda: T0,
        signer=lambda: signer,
        offline=True,
        progress=meddle,
    )
    assert calls and result.races == 1
    assert result.evidence_commit is None  # the other pass recorded the decision; this one found it done
    statements = decision_records(ws)  # and the genesis ratification the other pass wrote
    assert len(statements) == 1
    assert json.loads(ws.show(statements[0]))["predicate"]["promotion"]["id"] == "shop-1.4.0--dev"


def test_an_edited_index_cache_cannot_cause_a_second_decision(tmp_path: Path) -> None:
    """The cache is only a cache: a row deleted from it (its head intact) does not get a promotion
    decided again; the branch is checked before anything is signed."""
    ws = example_workspace(tmp_path)
    assert _pass(ws, T0) == {"shop-1.4.0--dev": "allow"}
    head = ws.git("rev-parse", "refs/heads/stella/evidence")
    cache = cache_path(Repo(ws.root), "refs/heads/stella/evidence")
    db = sqlite3.connect(cache)
    db.execute("DELETE FROM records WHERE promotion = 'shop-1.4.0--dev'")
    db.execute("DELETE FROM meta WHERE key = 'source'")  # and the next pass reads every promotion
    db.commit()
    db.close()
    write_files(ws.root, {"releases/shop-1.3.0.yaml": RELEASE_130})  # something new to look at
    commit_all(ws.root, "a new release")
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.err
    assert [d["promotion"] for d in run.json()["decisions"] if d["evidence"]] == []
    assert "has no record of shop-1.4.0--dev, but the branch does: rebuilding the index" in run.err
    assert len(decision_records(ws)) == 1  # one decision per promotion, still
    assert ws.git("rev-parse", "refs/heads/stella/evidence") != head  # the new release's lock only
