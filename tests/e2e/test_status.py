"""`stella status`: per target, what should run, what its sticker says and its last deployment, read from
the evidence branch and believed only as far as it verifies; with a real agent on a real Docker Engine
(tests/e2e/test_agent.py's site), and a sticker forged on the branch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.evidence import canonical
from reconciler.history import Record
from reconciler.status import State, Sticker, target_state
from tests.e2e.test_agent import Site, make_site
from tests.support.dockerd import DockerDaemon, start_dockerd
from tests.support.pipeline import Workspace, change_evidence
from tests.support.registry import RegistryServer

STICKER = "targets/dev/web-1/stella.version.json"


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerDaemon]:
    daemon = start_dockerd()
    try:
        yield daemon
    finally:
        daemon.close()


@pytest.fixture(autouse=True)
def _clean_engine(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "engine" in request.fixturenames:
        request.getfixturevalue("engine").remove_containers()


def _status(site: Site, *args: str) -> tuple[int, Any]:
    run = site.stella("status", *args, "-o", "json")
    assert run.code in (0, 1), run.out + run.err
    return run.code, json.loads(run.out)


def _target(payload: Any) -> Any:
    [environment] = payload["environments"]
    [target] = environment["targets"]
    return target


def _forge(site: Site, sticker: dict[str, Any]) -> None:
    """Commit a sticker on the evidence branch as someone with push access could (it is not signed)."""
    change_evidence(Workspace(site.root, site.evidence_key), {STICKER: canonical(sticker)}, "forged sticker")


@pytest.mark.registry
def test_status_before_and_after_the_agent_deploys(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    site, _image = make_site(tmp_path, registry, engine)
    passed = site.reconcile()
    genesis = str(passed["ratification"])
    [outcome] = passed["decisions"]  # type: ignore[misc]
    decision = outcome["evidence"]
    release = next(iter(passed["locked"]))  # type: ignore[call-overload]

    code, before = _status(site)
    assert code == 1
    [environment] = before["environments"]
    assert environment["name"] == "dev"
    assert environment["shouldRun"] == {
        "evidence": decision,
        "release": {"id": release["id"], "name": "shop-1.0"},
        "decidedAt": environment["shouldRun"]["decidedAt"],
    }
    assert _target(before) == {
        "name": "web-1",
        "project": "shopdev",
        "agent": "docker",
        "state": "pending",
        "reason": "shop-1.0 is allowed, nothing deployed yet",
        "sticker": None,
        "lastDeployment": None,
        "drift": None,
    }
    assert before["ok"] is False and before["evidenceRef"] == "refs/heads/stella/evidence"
    assert before["policy"] is not None
    text = site.stella("status")
    assert text.code == 1 and text.out.startswith("dev/web-1: pending"), text.out + text.err

    run = site.agent(genesis)
    assert run.code == 0, run.out + run.err
    done = json.loads(run.out)
    deployed = json.loads((site.state / "stella.version.json").read_bytes())

    code, after = _status(site, "dev")
    assert code == 0, after
    assert after["ok"] is True
    assert _target(after) == {
        "name": "web-1",
        "project": "shopdev",
        "agent": "docker",
        "state": "in-sync",
        "reason": "runs shop-1.0",
        "sticker": {
            "decision": decision,
            "deployment": done["deployment"],
            "release": {"id": release["id"], "name": "shop-1.0"},
            "deployedAt": deployed["deployedAt"],
            "verified": True,
            "problem": None,
        },
        "lastDeployment": {
            "evidence": done["deployment"],
            "type": "deployment",
            "result": "succeeded",
            "decision": decision,
            "release": {"id": release["id"], "name": "shop-1.0"},
            "completedAt": deployed["deployedAt"],
        },
        "drift": None,
    }
    text = site.stella("status")
    assert text.code == 0, text.out + text.err
    assert text.out.startswith("dev/web-1: in-sync (runs shop-1.0); should run shop-1.0"), text.out
    assert f"last deployment shop-1.0 succeeded at {deployed['deployedAt']}" in text.out

    unknown = site.stella("status", "prod", "-o", "json")
    assert unknown.code == 2, unknown.out + unknown.err
    assert "no environment 'prod' in the ratified policy" in json.loads(unknown.out)["message"]
    assert "environments: dev" in unknown.err


@pytest.mark.registry
def test_a_sticker_forged_on_the_evidence_branch_is_not_believed(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    site, _image = make_site(tmp_path, registry, engine)
    passed = site.reconcile()
    genesis = str(passed["ratification"])
    [outcome] = passed["decisions"]  # type: ignore[misc]
    decision = outcome["evidence"]
    fake = "sha256:" + "ab" * 32
    forged = {
        "version": "1.0",
        "environment": "dev",
        "target": "web-1",
        "release": {"id": "sha256:" + "cd" * 32, "name": "shop-1.0", "components": {}},
        "decision": decision,
        "deployment": fake,
        "deployedAt": "2026-12-04T10:00:00Z",
        "previous": None,
    }

    # before the agent ran: the forged sticker claims the decision runs; nothing verifies it
    _forge(site, forged)
    code, before = _status(site)
    assert code == 1
    target = _target(before)
    assert target["state"] == "pending" and target["lastDeployment"] is None, target
    assert target["sticker"]["verified"] is False
    assert (
        target["sticker"]["problem"] == f"it names {fake}, which is no verified record on the evidence branch"
    )

    # after a real deployment, a forged sticker (naming no record that verifies) is still not believed
    run = site.agent(genesis)
    assert run.code == 0, run.out + run.err
    code, deployed = _status(site)
    assert code == 0 and _target(deployed)["state"] == "in-sync", deployed
    _forge(site, forged)
    code, after = _status(site)
    target = _target(after)
    assert code == 1 and target["state"] == "unknown", target
    assert target["sticker"]["verified"] is False and fake in target["sticker"]["problem"]
    assert target["lastDeployment"]["result"] == "succeeded"
    assert target["reason"].startswith("shop-1.0 was deployed, but its sticker is not believed")


# --- the state of a target, as a table -----------------------------------------------------------

WHEN = datetime(2026, 12, 4, 10, tzinfo=UTC)
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def _decision(evidence: str) -> Record:
    return Record(evidence, "release_decision", "dev", None, "sha256:r", "shop-1.0", "allow", WHEN, None, {})


def _deployment(decision: str, result: str) -> Record:
    return Record(
        "sha256:" + "9" * 64, "deployment", "@target:dev/web-1", None, "sha256:r", "shop-1.0", result,
        WHEN, None, {}, source=decision,
    )  # fmt: skip


def _sticker(decision: str, verified: bool = True) -> Sticker:
    return Sticker(decision, "sha256:" + "9" * 64, None, None, verified, None if verified else "forged")


@pytest.mark.parametrize(
    ("should_run", "sticker", "last", "state"),
    [
        (None, None, None, "never"),
        (_decision(D1), None, None, "pending"),
        (_decision(D1), _sticker(D1), _deployment(D1, "succeeded"), "in-sync"),
        (_decision(D2), _sticker(D1), _deployment(D1, "succeeded"), "pending"),
        (_decision(D2), _sticker(D1), _deployment(D2, "failed"), "failed"),
        (_decision(D2), _sticker(D1), _deployment(D2, "rolled-back"), "failed"),
        (_decision(D1), _sticker(D1, verified=False), None, "pending"),
        (_decision(D1), _sticker(D1, verified=False), _deployment(D1, "succeeded"), "unknown"),
        (_decision(D1), None, _deployment(D1, "succeeded"), "unknown"),
        (None, None, _deployment(D1, "succeeded"), "unknown"),
    ],
    ids=[
        "nothing-allowed",
        "allowed-not-deployed",
        "running-it",
        "newer-decision",
        "newest-failed",
        "newest-rolled-back",
        "unbelieved-sticker-nothing-deployed",
        "deployed-but-sticker-unbelieved",
        "deployed-no-sticker",
        "deployed-nothing-allowed",
    ],
)
def test_the_state_of_a_target(
    should_run: Record | None, sticker: Sticker | None, last: Record | None, state: State
) -> None:
    assert target_state(should_run, sticker, last)[0] == state
