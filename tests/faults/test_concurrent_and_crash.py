"""Two reconcilers at once, and reconcilers killed mid-pass: exactly one record per promotion, and the
evidence branch is always either as before or fully written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from reconciler.repo import RaceLost, Repo
from tests.support.cli import STELLA
from tests.support.pipeline import RELEASE_130, Workspace, example_workspace, promotion
from tests.support.repos import commit_all, write_files

ENVIRONMENTS = ["dev", "qa1", "qa2", "qa3", "qa4", "qa5"]


def _many_open_promotions(tmp_path: Path) -> Workspace:
    ws = example_workspace(tmp_path)
    files: dict[str, str | bytes | None] = {"releases/shop-1.3.0.yaml": RELEASE_130}
    for env in ENVIRONMENTS[1:]:
        files[f"environments/{env}.yaml"] = f"apiVersion: stella/v1\nkind: Environment\nname: {env}\n"
    for env in ENVIRONMENTS:
        for release in ("shop-1.3.0", "shop-1.4.0"):
            files[f"promotions/{release}--{env}.yaml"] = promotion(release, env)
    write_files(ws.root, files)
    commit_all(ws.root, "twelve promotions")
    return ws


def _spawn(ws: Workspace) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [STELLA, "reconcile", "--once", "--repo", str(ws.root), "-o", "json"],
        env={**os.environ, **ws.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _decisions(ws: Workspace) -> dict[str, list[str]]:
    by_promotion: dict[str, list[str]] = {}
    for path in ws.evidence_files():
        if path.startswith("evidence/") and not path.endswith(".sigstore.json"):
            predicate = json.loads(ws.show(path))["predicate"]
            if predicate["type"] == "policy_ratification":
                continue
            promotion_id = predicate["promotion"]["id"]
            by_promotion.setdefault(promotion_id, []).append(path)
    return by_promotion


def _expected() -> set[str]:
    return {f"{r}--{e}" for r in ("shop-1.3.0", "shop-1.4.0") for e in ENVIRONMENTS}


def test_two_reconcilers_started_together(tmp_path: Path) -> None:
    ws = _many_open_promotions(tmp_path)
    first, second = _spawn(ws), _spawn(ws)
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [o[1].decode() for o in outputs]
    decisions = _decisions(ws)
    assert set(decisions) == _expected()
    assert all(len(paths) == 1 for paths in decisions.values()), decisions
    recorded = [json.loads(out)["decisions"] for out, _ in outputs]
    written = [d["promotion"] for run in recorded for d in run if d["evidence"]]
    assert sorted(written) == sorted(_expected())  # each written by exactly one of the two
    verify = ws.stella("audit", "verify")
    assert verify.code == 0, verify.out


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0], ids=lambda d: f"kill-after-{d}s")
def test_killed_pass_leaves_branch_before_or_complete(tmp_path: Path, delay: float) -> None:
    ws = _many_open_promotions(tmp_path)
    before = ws.git("for-each-ref", "--format=%(objectname)", "refs/heads/stella/evidence")
    victim = _spawn(ws)
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    after = ws.git("for-each-ref", "--format=%(objectname)", "refs/heads/stella/evidence")
    if after != before:  # the pass got to its one commit: it must be complete
        assert set(_decisions(ws)) == _expected()
        assert ws.stella("audit", "verify").code == 0
    rerun = ws.stella("reconcile", "--once")
    assert rerun.code == 0, rerun.err + rerun.out
    decisions = _decisions(ws)
    assert set(decisions) == _expected()
    assert all(len(paths) == 1 for paths in decisions.values())
    assert ws.stella("audit", "verify").code == 0


def test_lock_left_by_a_killed_process_is_recovered(tmp_path: Path) -> None:
    ws = _many_open_promotions(tmp_path)
    write_files(ws.root, {"environments/qa9.yaml": "apiVersion: stella/v1\nkind: Environment\nname: qa9\n"})
    commit_all(ws.root, "an environment, ratified by the first pass")
    assert ws.stella("reconcile", "--once").code == 0
    lock = ws.root / ".git" / "refs" / "heads" / "stella" / "evidence.lock"
    lock.write_text("0" * 40 + "\n")
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    write_files(ws.root, {"promotions/shop-1.4.0--qa9.yaml": promotion("shop-1.4.0", "qa9")})
    commit_all(ws.root, "one more")
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.err
    assert not lock.exists()
    assert [d["promotion"] for d in run.json()["decisions"] if d["evidence"]] == ["shop-1.4.0--qa9"]


def test_fresh_foreign_lock_is_reported_not_removed(tmp_path: Path) -> None:
    ws = _many_open_promotions(tmp_path)
    lock = ws.root / ".git" / "refs" / "heads" / "stella" / "evidence.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("0" * 40 + "\n")
    run = ws.stella("reconcile", "--once")
    assert run.code == 3
    assert "is locked by another process" in run.err
    assert lock.exists()
    assert ws.git("for-each-ref", "refs/heads/stella") == ""


def test_lock_of_a_killed_stella_is_removed_at_once(tmp_path: Path) -> None:
    ws = _many_open_promotions(tmp_path)
    lock = ws.root / ".git" / "refs" / "heads" / "stella" / "evidence.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("0" * 40 + "\n")  # fresh, as if written a moment ago...
    dead = subprocess.Popen(["true"])
    dead.wait()
    (ws.root / ".git" / "stella-ref.owner").write_text(f"{dead.pid}\n")  # ...by a Stella now gone
    run = ws.stella("reconcile", "--once")
    assert run.code == 0, run.err
    assert not lock.exists()
    assert ws.stella("audit", "verify").code == 0


def test_a_lost_race_leaves_no_owner_file(tmp_path: Path) -> None:
    """The owner file goes on every way out: after a lost compare-and-swap too."""
    ws = _many_open_promotions(tmp_path)
    repo = Repo(ws.root)
    head = repo.resolve_ref("refs/heads/main")
    assert head is not None
    repo.commit_files("refs/heads/stella/other", None, {"x": b"1"}, "first")
    with pytest.raises(RaceLost):
        repo.commit_files("refs/heads/stella/other", None, {"x": b"2"}, "second, racing")
    assert not (ws.root / ".git" / "stella-ref.owner").exists()


def test_a_fresh_foreign_lock_is_kept_despite_an_old_owner_file(tmp_path: Path) -> None:
    """A Stella killed long ago left its owner file; a lock another writer took just now is not its."""
    ws = _many_open_promotions(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    owner = ws.root / ".git" / "stella-ref.owner"
    owner.write_text(f"{dead.pid}\n")
    os.utime(owner, (time.time() - 3600, time.time() - 3600))
    lock = ws.root / ".git" / "refs" / "heads" / "stella" / "evidence.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("0" * 40 + "\n")
    run = ws.stella("reconcile", "--once")
    assert run.code == 3
    assert "is locked by another process" in run.err
    assert lock.exists()
