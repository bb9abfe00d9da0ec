"""`stella demo` runs the whole flow offline and every step does what it says, on any day."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cli import stella
from tests.support.dockerd import find_dockerd, start_dockerd
from tests.support.registry import ToolMissing

CLOCK = (
    "The demo's clock is fixed at 2026-12-01T09:30:00Z (Tuesday) so that every step is the same on any day."
)
HEX64 = "[0-9a-f]{64}"
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/stella-demo-test.sock"}
DEPLOY = "The agent of dev-1 deploys what the evidence says"


def test_demo_runs_every_step() -> None:
    run = stella("demo", "-o", "json", env=NO_ENGINE)
    assert run.code == 0, run.err
    steps = run.json()
    assert [s["ok"] for s in steps] == [True] * len(steps)
    titles = [s["title"] for s in steps]
    assert titles[0] == "A Git repository like yours"
    verify = "Verify the evidence branch offline, from the pinned genesis"
    assert verify in titles
    by_title = {s["title"]: s["lines"] for s in steps}
    assert any(line.startswith("shop-1.4.0--dev: allow -> evidence sha256:") for line in by_title[titles[2]])
    # the demo's clock is a Tuesday morning: staging is never in its weekend freeze, whatever the day
    staging = by_title["Merge (a merge commit keeps the signatures) and reconcile"]
    expected = [
        rf"shop-1\.4\.0--staging: allow -> evidence sha256:{HEX64}",
        r"  pass    environment-order: soaked: release shop-1\.4\.0 was allowed in dev at "
        rf"2026-12-01T09:30:00Z \(evidence sha256:{HEX64}\); no soak required",
        re.escape("  pass    freeze-window: not-frozen: no freeze window is open"),
        re.escape("  pass    approvals: approved: approved by release-manager@example.com"),
        re.escape("  pass    quota: no-limit: no deployments-per-day limit"),
        r"one evidence commit: [0-9a-f]{12}",
    ]
    assert len(staging) == len(expected), staging
    for line, pattern in zip(staging, expected, strict=True):
        assert re.fullmatch(pattern, line), line
    assert by_title[titles[2]][0].startswith("genesis: policy sha256:")
    change = by_title["Change the policy: a contributor makes themselves an approver"]
    assert change[0].startswith("policy change sha256:") and ": pending: " in change[0]
    assert change[1:] == ["  changed: trust/groups.yaml"]
    ratified = by_title["A policy admin approves the change, and the next pass ratifies it"]
    assert ratified[0].startswith("policy sha256:") and " ratified by sha256:" in ratified[0]
    assert by_title[verify][0].startswith("OK: ") and "2 ratified polic(ies)" in by_title[verify][0]
    tampered = by_title["Tamper with a statement, and verify again"]
    assert any("changed after it was written" in line for line in tampered)
    # no Docker Engine: the deployment step says so, and the demo still passes
    skipped = by_title[f"{DEPLOY} (skipped: no Docker Engine)"]
    assert skipped == [
        "skipped: cannot reach the Docker Engine at unix:///nonexistent/stella-demo-test.sock: "
        "[Errno 2] No such file or directory"
    ]


def test_demo_deploys_with_the_agent_when_a_docker_engine_answers(tmp_path: Path) -> None:
    try:
        find_dockerd()
    except ToolMissing as exc:
        pytest.skip(str(exc))
    with start_dockerd() as daemon:
        run = stella("demo", "--keep", tmp_path / "demo", "-o", "json", env={"DOCKER_HOST": daemon.endpoint})
        client = daemon.client()
        try:
            started = client.containers.list(
                all=True, filters={"label": "com.docker.compose.project=stella-demo"}
            )
        finally:
            client.close()
    assert run.code == 0, run.err
    steps = {s["title"]: s for s in run.json()}
    deployed = steps[DEPLOY]
    assert deployed["ok"], deployed
    # the example's images live only in its offline mirror: the pull fails, recorded and signed
    assert re.fullmatch(rf"dev-1 \(dev\): failed sha256:{HEX64}", deployed["lines"][0]), deployed
    assert "pulling registry.example.com/shop/web@sha256:" in deployed["lines"][1]
    assert re.fullmatch(
        rf"deployment record sha256:{HEX64} \(failed\), state directory .*", deployed["lines"][2]
    )
    assert started == []  # nothing started
    assert not (tmp_path / "demo" / "agent-dev-1" / "stella.version.json").exists()  # no sticker
    verify = steps["Verify the evidence branch offline, from the pinned genesis"]["lines"][0]
    assert verify.startswith("OK: 5 record(s)"), verify  # the deployment record verifies with the rest
    repo = tmp_path / "demo" / "repo"
    status = stella("status", "dev", "--repo", repo, "-o", "json")
    assert status.code == 1, status.err  # dev-1 does not run what it should
    (target,) = status.json()["environments"][0]["targets"]
    assert (target["name"], target["lastDeployment"]["result"]) == ("dev-1", "failed"), target


def test_demo_keep_leaves_a_repository_that_verifies(tmp_path: Path) -> None:
    keep = tmp_path / "demo"  # does not exist yet: made
    run = stella("demo", "--keep", keep, env=NO_ENGINE)
    assert run.code == 0, run.out + run.err
    lines = run.out.splitlines()
    assert lines[0] == CLOCK
    repo = keep.resolve() / "repo"
    assert lines[-3:] == [
        f"The demo's work is kept in {keep.resolve()}: the repository is {repo}.",
        f"To look at the evidence branch:  git -C {shlex.quote(str(repo))} log --stat stella/evidence",
        f"To verify it offline:            stella audit verify --repo {shlex.quote(str(repo))}",
    ]
    assert sorted(p.name for p in keep.iterdir()) == [
        "agent-dev-1.pem",
        "agent-dev-1.pem.pub",
        "evidence-key.pem",
        "evidence-key.pem.pub",
        "repo",
        "ssh",
    ]
    verified = stella("audit", "verify", "--repo", repo)
    assert verified.code == 0, verified.out + verified.err


def test_demo_keep_into_an_empty_directory(tmp_path: Path) -> None:
    run = stella("demo", "--keep", tmp_path, "-o", "json", env=NO_ENGINE)
    assert run.code == 0, run.err
    assert all(step["ok"] for step in run.json())
    assert (tmp_path / "repo" / "stella.yaml").is_file()


def _not_empty(directory: Path) -> None:
    directory.mkdir()
    (directory / "notes.txt").write_text("mine\n")


def _a_file(path: Path) -> None:
    path.write_text("a file\n")


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_not_empty, "--keep needs a directory that does not exist or is empty"),
        (_a_file, "--keep needs a directory, and this is not one"),
    ],
    ids=["not-empty", "a-file"],
)
def test_demo_keep_refuses_a_directory_in_use(
    tmp_path: Path, make: Callable[[Path], None], problem: str
) -> None:
    keep = tmp_path / "taken"
    make(keep)
    before = sorted(tmp_path.rglob("*"))
    run = stella("demo", "--keep", keep)
    assert (run.code, run.out, run.err) == (2, "", f"error: {keep}: {problem}\n")
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
