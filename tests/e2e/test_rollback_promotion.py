"""`stella rollback`: a promotion back to a release the environment ran before, through the gates.

Real Git, real SSH signatures, the example repository's offline mirror. Release A (shop-1.3.0) is
allowed in dev, then prod; release B (shop-1.4.0) after it. Rolling prod back to A needs the
environment's `rollbackApprovals` (two approvals where an ordinary promotion needs one), and its own
earlier allow in prod stands in for `promotesFrom`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.pipeline import RELEASE_130, Workspace, example_workspace
from tests.support.repos import commit_all, write_files
from tests.support.ssh import Person, allowed_signers, person

A, B = "shop-1.3.0", "shop-1.4.0"
C = "shop-1.3.1"
"""The images of A under another name (another release id): allowed in dev, never in prod."""
D = "shop-1.3.2"
"""The images of A under yet another name: never promoted anywhere."""
ROLLBACK_A = f"{A}--prod--rollback-1"

PROD = """\
apiVersion: stella/v1
kind: Environment
name: prod
promotesFrom: dev
approvals: {required: 1, groups: [release-managers], separationOfDuties: false}
rollbackApprovals: {required: 2, groups: [release-managers], separationOfDuties: true}
template: templates/shop.compose.yml.j2
variables: {LOG_LEVEL: info}
"""

GROUPS = """\
apiVersion: stella/v1
kind: Groups
groups:
  release-managers: [release-manager@example.com, platform-lead@example.com]
  policy-admins: [platform-lead@example.com]
"""


def _release(name: str) -> str:
    return RELEASE_130.replace("name: shop-1.3.0", f"name: {name}")


def _promotion(release: str, environment: str, *, rollback: bool = False) -> str:
    text = f"apiVersion: stella/v1\nkind: Promotion\nrelease: {release}\nenvironment: {environment}\n"
    return text + ("rollback: true\n" if rollback else "")


@pytest.fixture
def team(tmp_path: Path) -> dict[str, Person]:
    keys = tmp_path / "ssh"
    return {
        role: person(keys, f"{role}@example.com")
        for role in ("requester", "release-manager", "platform-lead")
    }


def _as(ws: Workspace, who: Person, *args: str) -> Any:
    return ws.stella(*args, env=who.git_env())


def _approve(ws: Workspace, who: Person, promotion: str) -> None:
    run = _as(ws, who, "approve", promotion, "--key", str(who.key), "--identity", who.identity)
    assert run.code == 0, run.err


def _decisions(ws: Workspace) -> dict[str, dict[str, Any]]:
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.out + run.err
    return {d["promotion"]: d for d in run.json()["decisions"]}


def _gates(decision: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["gate"]: g for g in decision["gates"]}


def _promote_to_prod(ws: Workspace, team: dict[str, Person], release: str) -> dict[str, Any]:
    """Request `release` in prod, one approval on the branch, merge, reconcile: the decision."""
    promotion = f"{release}--prod"
    assert _as(ws, team["requester"], "promote", release, "--to", "prod").code == 0
    ws.git("checkout", "-q", f"promote/{promotion}")
    _approve(ws, team["release-manager"], promotion)
    ws.git("checkout", "-q", "main")
    ws.git("merge", "-q", "--no-ff", "-m", f"Merge promote/{promotion}", f"promote/{promotion}")
    return _decisions(ws)[promotion]


def _setup(tmp_path: Path, team: dict[str, Person]) -> Workspace:
    """A allowed in dev then prod, B allowed in dev then prod (prod runs B), C allowed in dev only."""
    ws = example_workspace(tmp_path)
    write_files(
        ws.root,
        {
            "environments/prod.yaml": PROD,
            "trust/allowed_signers": allowed_signers(*team.values()),
            "trust/groups.yaml": GROUPS,
            f"releases/{A}.yaml": RELEASE_130,
            f"releases/{C}.yaml": _release(C),
            f"releases/{D}.yaml": _release(D),
            f"promotions/{A}--dev.yaml": _promotion(A, "dev"),
            f"promotions/{C}--dev.yaml": _promotion(C, "dev"),
        },
    )
    commit_all(ws.root, "releases A, B and C; prod needs one approval, a rollback two")
    requester = team["requester"]
    ws.git("config", "user.email", requester.identity)
    ws.git("config", "gpg.format", "ssh")
    ws.git("config", "user.signingkey", str(requester.key))
    dev = _decisions(ws)
    assert {p: d["decision"] for p, d in dev.items()} == {
        f"{A}--dev": "allow",
        f"{B}--dev": "allow",
        f"{C}--dev": "allow",
    }
    for release in (A, B):
        decision = _promote_to_prod(ws, team, release)
        assert decision["decision"] == "allow", decision
    return ws


def _should_run(ws: Workspace) -> dict[str, Any]:
    status = ws.stella("status", "prod", "-o", "json")
    assert status.code in (0, 1), status.err
    (prod,) = status.json()["environments"]
    return dict(prod["shouldRun"])


def test_rollback_to_a_release_prod_ran_before(tmp_path: Path, team: dict[str, Person]) -> None:
    ws = _setup(tmp_path, team)
    assert _should_run(ws)["release"]["name"] == B

    run = _as(
        ws, team["requester"], "rollback", "prod", "--to", A, "--reason", "B breaks checkout", "-o", "json"
    )
    assert run.code == 0, run.err
    assert run.json() == {
        "promotion": ROLLBACK_A,
        "branch": f"promote/{ROLLBACK_A}",
        "commit": ws.git("rev-parse", f"promote/{ROLLBACK_A}"),
        "file": f"promotions/{ROLLBACK_A}.yaml",
        "release": A,
        "environment": "prod",
        "rollback": True,
    }
    written = yaml.safe_load(ws.git("show", f"promote/{ROLLBACK_A}:promotions/{ROLLBACK_A}.yaml"))
    assert written == {
        "apiVersion": "stella/v1",
        "kind": "Promotion",
        "release": A,
        "environment": "prod",
        "rollback": True,
        "reason": "B breaks checkout",
    }
    assert ws.git("rev-parse", f"promote/{ROLLBACK_A}~1") == ws.git("rev-parse", "main")
    assert "BEGIN SSH SIGNATURE" in ws.git("cat-file", "-p", f"promote/{ROLLBACK_A}")  # the requester's

    ws.git("checkout", "-q", f"promote/{ROLLBACK_A}")
    _approve(ws, team["release-manager"], ROLLBACK_A)
    plan = ws.stella("plan", "--base", "main", "-o", "json")
    assert plan.code == 1
    (pending,) = plan.json()["decisions"]
    gates = _gates(pending)
    assert (gates["environment-order"]["status"], gates["environment-order"]["reason"]) == (
        "pass",
        "allowed-here-before",
    )
    approvals = gates["approvals"]
    assert (approvals["status"], approvals["reason"]) == ("pending", "awaiting-approvals")
    assert approvals["message"] == (
        "1 of 2 approval(s) from release-manager@example.com; can approve: platform-lead@example.com"
    )
    assert (approvals["facts"]["required"], approvals["facts"]["policy"]) == (2, "rollbackApprovals")
    _approve(ws, team["platform-lead"], ROLLBACK_A)
    assert ws.stella("plan", "--base", "main").code == 0

    ws.git("checkout", "-q", "main")
    ws.git("merge", "-q", "--no-ff", "-m", f"Merge promote/{ROLLBACK_A}", f"promote/{ROLLBACK_A}")
    decision = _decisions(ws)[ROLLBACK_A]
    assert (decision["decision"], decision["release"], decision["environment"]) == ("allow", A, "prod")
    gates = _gates(decision)
    order = gates["environment-order"]
    assert (order["status"], order["reason"]) == ("pass", "allowed-here-before")
    assert order["message"].startswith(f"rollback: release {A} was allowed in prod at ")
    assert (
        gates["approvals"]["message"] == "approved by platform-lead@example.com, release-manager@example.com"
    )

    evidence = decision["evidence"]
    statement = json.loads(ws.show(f"evidence/{evidence.removeprefix('sha256:')}.json"))
    predicate = statement["predicate"]
    assert predicate["promotion"]["id"] == ROLLBACK_A
    inputs = json.loads(ws.show(f"inputs/{predicate['inputs']['sha256']}.json"))
    assert inputs["promotion"]["rollback"] is True
    assert inputs["promotion"]["release"] == A
    assert inputs["requester"]["identity"] == "requester@example.com"
    earlier = [(p["environment"], p["result"]) for p in inputs["history"]]
    assert ("prod", "allow") in earlier and ("dev", "allow") in earlier
    assert order["facts"]["allowedHere"] in {p["evidence"] for p in inputs["history"]}

    should = _should_run(ws)
    assert (should["evidence"], should["release"]["name"]) == (evidence, A)
    replay = ws.stella("replay", evidence, "-o", "json")
    assert replay.code == 0, replay.out + replay.err
    assert replay.json()["identical"] is True
    verify = ws.stella("audit", "verify")
    assert verify.code == 0, verify.out + verify.err

    # prod runs A now: rolling back to it again is refused; B, which prod ran before, can be rolled back to
    again = _as(ws, team["requester"], "rollback", "prod", "--to", A)
    assert again.code == 2
    assert f"{A} is what prod runs now (evidence {evidence})" in again.err
    forward = _as(ws, team["requester"], "rollback", "prod", "--to", B, "-o", "json")
    assert forward.code == 0, forward.err
    assert forward.json()["promotion"] == f"{B}--prod--rollback-1"
    ws.git("checkout", "-q", f"promote/{B}--prod--rollback-1")
    _approve(ws, team["release-manager"], f"{B}--prod--rollback-1")
    _approve(ws, team["platform-lead"], f"{B}--prod--rollback-1")
    ws.git("checkout", "-q", "main")
    ws.git("merge", "-q", "--no-ff", "-m", "Merge the rollback to B", f"promote/{B}--prod--rollback-1")
    assert _decisions(ws)[f"{B}--prod--rollback-1"]["decision"] == "allow"
    assert _should_run(ws)["release"]["name"] == B
    # the second rollback of A to prod gets the next id: the first was decided, and an id is decided once
    second = _as(ws, team["requester"], "rollback", "prod", "--to", A)
    assert second.code == 0, second.err
    assert second.out.startswith(
        f"wrote promotions/{A}--prod--rollback-2.yaml (rollback: true) on branch promote/{A}--prod--rollback-2 ("
    )
    assert (
        f"next: git push origin promote/{A}--prod--rollback-2, and open a pull request into main"
        in second.out
    )


def test_rollback_refused_for_a_release_prod_never_ran(tmp_path: Path, team: dict[str, Person]) -> None:
    ws = _setup(tmp_path, team)
    branches = ws.git("for-each-ref", "--format=%(refname)", "refs/heads/")
    head = ws.git("rev-parse", "main")

    for release in (C, D):  # C ran in dev only, D nowhere
        run = _as(ws, team["requester"], "rollback", "prod", "--to", release)
        assert run.code == 2, run.out + run.err
        expected = f"{release} was never allowed in prod: a rollback goes back to a release prod ran before"
        assert expected in run.err
        as_json = _as(ws, team["requester"], "rollback", "prod", "--to", release, "-o", "json")
        assert (as_json.code, as_json.json()["exitCode"]) == (2, 2)
        assert expected in as_json.json()["message"]

    current = _as(ws, team["requester"], "rollback", "prod", "--to", B)
    assert current.code == 2
    assert f"{B} is what prod runs now" in current.err
    assert "nothing to roll back" in current.err
    missing = _as(ws, team["requester"], "rollback", "prod", "--to", "shop-9.9.9")
    assert (missing.code, "no release 'shop-9.9.9'" in missing.err) == (2, True)
    nowhere = _as(ws, team["requester"], "rollback", "qa", "--to", A)
    assert (nowhere.code, "no environment 'qa'" in nowhere.err) == (2, True)

    assert ws.git("for-each-ref", "--format=%(refname)", "refs/heads/") == branches  # no branch written
    assert ws.git("rev-parse", "main") == head


def test_hand_written_rollback_of_a_release_prod_never_ran_is_denied(
    tmp_path: Path, team: dict[str, Person]
) -> None:
    ws = _setup(tmp_path, team)
    attack = f"{D}--prod--rollback-1"
    write_files(ws.root, {f"promotions/{attack}.yaml": _promotion(D, "prod", rollback=True)})
    commit_all(ws.root, "roll prod 'back' to a release it never ran, skipping dev")
    ws.git("checkout", "-q", "-b", "approvals")
    _approve(ws, team["release-manager"], attack)
    _approve(ws, team["platform-lead"], attack)
    ws.git("checkout", "-q", "main")
    ws.git("merge", "-q", "--no-ff", "-m", "Merge approvals", "approvals")

    decision = _decisions(ws)[attack]
    assert decision["decision"] == "deny"
    statement = json.loads(ws.show(f"evidence/{decision['evidence'].removeprefix('sha256:')}.json"))
    release_id = statement["predicate"]["release"]["id"]
    assert _gates(decision)["environment-order"] == {
        "gate": "environment-order",
        "status": "fail",
        "reason": "never-allowed-here",
        "message": f"rollback: release {D} ({release_id}) was never allowed in prod; "
        "a rollback goes back to a release prod ran before",
        "facts": {"rollback": True},
    }
    assert _should_run(ws)["release"]["name"] == B  # prod still runs B
    assert ws.stella("audit", "verify").code == 0


def test_a_rollback_id_cannot_name_another_release(tmp_path: Path, team: dict[str, Person]) -> None:
    ws = _setup(tmp_path, team)
    # an id that says "roll prod back to A" on a file that promotes D
    write_files(ws.root, {f"promotions/{ROLLBACK_A}.yaml": _promotion(D, "prod", rollback=True)})
    commit_all(ws.root, "a rollback id smuggling another release")
    run = ws.stella("validate", "-o", "json")
    assert run.code == 2
    assert run.json()["problems"] == [
        {
            "file": f"promotions/{ROLLBACK_A}.yaml",
            "line": 3,
            "message": f"the rollback id '{ROLLBACK_A}' names '{A}--prod', but the file promotes {D} to prod "
            f"(its id would be {D}--prod--rollback-1)",
        }
    ]
    # an ordinary promotion under a rollback id is refused too
    write_files(ws.root, {f"promotions/{ROLLBACK_A}.yaml": _promotion(A, "prod")})
    commit_all(ws.root, "a rollback id on a promotion that is no rollback")
    run = ws.stella("validate", "-o", "json")
    assert [p["message"] for p in run.json()["problems"]] == [
        f"'{ROLLBACK_A}' is a rollback id: the file must say rollback: true"
    ]
    reconcile = ws.stella("reconcile", "--once", "-o", "json")
    assert reconcile.code == 2
    assert ROLLBACK_A not in {d["promotion"] for d in reconcile.json()["decisions"]}
