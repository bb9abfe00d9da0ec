"""DESIGN §8 end to end: a decision is made under the ratified policy, and a policy change counts only once
the previous policy approves it.

Each attack of the issue "Trust that does not rest on `main`" is run with the real `stella` command,
real Git, real ssh-keygen keys and (for the pre-receive guard) a real `git daemon` on 127.0.0.1, and
must fail for the attacker with output that says why; the proper flows (ratifying a change, rotating
an evidence key, verifying a packet offline against a pinned genesis) must work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.evidence import canonical, sha256_hex
from reconciler.sign import KeySigner, generate_key, load_private_key
from tests.support.cli import STELLA, Run, stella
from tests.support.gitdaemon import GitDaemon, start_git_daemon
from tests.support.offline import offline
from tests.support.pipeline import RELEASE_130, Workspace, change_evidence, example_workspace, promotion
from tests.support.repos import GIT_ENV, git, write_files
from tests.support.ssh import Person, allowed_signers, person

EVIDENCE = "refs/heads/stella/evidence"
TEMPLATE = "templates/shop.compose.yml.j2"
SETTINGS = """\
apiVersion: stella/v1
kind: Settings
tenant: shop
offline: true
mirror: mirror
signer: {plugin: key, key: env:STELLA_SIGNING_KEY}
evidence: {ref: refs/heads/stella/evidence}
governance: {required: 2, groups: [policy-admins], separationOfDuties: true}
"""
ROLES = ("requester", "release-manager", "platform-lead", "admin-1", "admin-2", "admin-3")
GROUPS = """\
apiVersion: stella/v1
kind: Groups
groups:
  release-managers: [release-manager@example.com, platform-lead@example.com]
  policy-admins: [admin-1@example.com, admin-2@example.com, admin-3@example.com]
"""


def environment(name: str, *, promotes_from: str | None = None, approvals: int = 0, extra: str = "") -> str:
    """An environment rendering the example template, with no freeze windows (the tests run any day)."""
    lines = ["apiVersion: stella/v1", "kind: Environment", f"name: {name}", *extra.splitlines()]
    if promotes_from:
        lines.append(f"promotesFrom: {promotes_from}")
    if approvals:
        lines.append(
            f"approvals: {{required: {approvals}, groups: [release-managers], separationOfDuties: true}}"
        )
    lines.append(f"template: {TEMPLATE}")
    return "\n".join(lines) + "\n"


ENVIRONMENTS = {
    "dev": environment("dev"),
    "qa": environment("qa"),
    "staging": environment("staging", promotes_from="dev", approvals=1),
    "prod": environment("prod", promotes_from="staging", approvals=2),
}


# --- people, commits and the workspace ---------------------------------------------------------------


@pytest.fixture
def team(tmp_path: Path) -> dict[str, Person]:
    keys = tmp_path / "ssh"
    return {role: person(keys, f"{role}@example.com") for role in ROLES}


def _git_as(root: Path, who: Person, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, **who.git_env(), "HOME": str(root)}
    done = subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def commit_as(ws: Workspace, who: Person, files: dict[str, str | bytes | None], message: str) -> str:
    """Write `files` and commit them on the current branch, SSH-signed with `who`'s key."""
    write_files(ws.root, files)
    _git_as(ws.root, who, "add", "-A")
    _git_as(
        ws.root,
        who,
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={who.key}",
        "commit",
        "-q",
        "-S",
        "-m",
        message,
    )
    return ws.git("rev-parse", "HEAD")


def approve(ws: Workspace, who: Person, *args: str) -> None:
    """`stella approve ARGS --key --identity` as `who` (a signed commit on the current branch)."""
    run = ws.stella("approve", *args, "--key", who.key, "--identity", who.identity, env=who.git_env())
    assert run.code == 0, run.out + run.err


def governed(
    tmp_path: Path,
    team: dict[str, Person],
    environments: dict[str, str] = ENVIRONMENTS,
    evidence_ref: str = EVIDENCE,
) -> Workspace:
    """example-repo/ with governance (2 of policy-admins, separation of duties), every team member in
    trust/allowed_signers, the given environments and evidence ref, and the genesis ratified by a first
    pass (which also allows shop-1.4.0 in dev)."""
    ws = example_workspace(tmp_path)
    for old in (ws.root / "environments").iterdir():
        old.unlink()
    write_files(
        ws.root,
        {
            "stella.yaml": SETTINGS.replace(EVIDENCE, evidence_ref),
            "trust/allowed_signers": allowed_signers(*team.values()),
            "trust/groups.yaml": GROUPS,
            **{f"environments/{name}.yaml": text for name, text in environments.items()},
        },
    )
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "governance and the team")
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.out + run.err
    result = run.json()
    assert result["ratification"] is not None
    assert [(d["promotion"], d["decision"]) for d in result["decisions"]] == [("shop-1.4.0--dev", "allow")]
    return ws


def reconcile(ws: Workspace, *, code: int = 0) -> dict[str, Any]:
    """`stella reconcile --once -o json`, which must exit with `code`; its JSON."""
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == code, run.out + run.err
    result: dict[str, Any] = run.json()
    return result


def statement(ws: Workspace, evidence_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ws.show(f"evidence/{evidence_id.removeprefix('sha256:')}.json"))
    return data


def pointer(ws: Workspace) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ws.show("policy/stella.policy.json"))
    return data


def decision(result: dict[str, Any], promotion_id: str) -> dict[str, Any]:
    (found,) = [d for d in result["decisions"] if d["promotion"] == promotion_id]
    return found


def gate(found: dict[str, Any], name: str) -> dict[str, Any]:
    (result,) = [g for g in found["gates"] if g["gate"] == name]
    return result


def records(ws: Workspace, kind: str, environment_name: str | None = None) -> list[str]:
    """Evidence ids of the statements of one type (and environment) on the branch."""
    out = []
    for path in ws.evidence_files():
        if not path.startswith("evidence/") or path.endswith(".sigstore.json"):
            continue
        predicate = json.loads(ws.show(path))["predicate"]
        if predicate["type"] == kind and environment_name in (None, predicate.get("environment")):
            out.append("sha256:" + path.removeprefix("evidence/").removesuffix(".json"))
    return out


def forge_staging_allow(ws: Workspace, key: Path | None) -> tuple[str, dict[str, bytes | None]]:
    """A complete "shop-1.4.0 allowed in staging" record, shaped like the real dev record and naming the
    ratified policy: statement, inputs, a compose lock, staging's pointer, and (given a key) a bundle
    signed with that key over the canonical statement bytes. Returns (the statement's path, the files)."""
    (dev,) = records(ws, "release_decision", "dev")
    data = statement(ws, dev)
    predicate = data["predicate"]
    inputs = json.loads(ws.show(f"inputs/{predicate['inputs']['sha256']}.json"))
    inputs["promotionId"] = "shop-1.4.0--staging"
    inputs["promotion"]["environment"] = inputs["environment"]["name"] = "staging"
    inputs_bytes = canonical(inputs)
    (artifact,) = predicate["artifacts"]
    lock = ws.show(f"artifacts/{artifact['sha256']}/{artifact['name']}").replace(b"dev", b"staging")
    predicate["environment"] = "staging"
    predicate["previous"] = None
    predicate["promotion"]["id"] = "shop-1.4.0--staging"
    predicate["artifacts"] = [{"name": artifact["name"], "sha256": sha256_hex(lock)}]
    predicate["inputs"] = {"sha256": sha256_hex(inputs_bytes)}
    assert predicate["policy"]["id"] == pointer(ws)["id"]  # it names the ratified policy
    raw = canonical(data)
    hex_id = sha256_hex(raw)
    current = {
        "artifacts": {artifact["name"]: sha256_hex(lock)},
        "decidedAt": predicate["decidedAt"],
        "evidence": f"sha256:{hex_id}",
        "release": predicate["release"]["name"],
        "releaseId": predicate["release"]["id"],
    }
    files: dict[str, bytes | None] = {
        f"evidence/{hex_id}.json": raw,
        f"inputs/{sha256_hex(inputs_bytes)}.json": inputs_bytes,
        f"artifacts/{sha256_hex(lock)}/{artifact['name']}": lock,
        "environments/staging/stella.version.json": canonical(
            {"current": current, "environment": "staging", "head": f"sha256:{hex_id}"}
        ),
    }
    if key is not None:
        files[f"evidence/{hex_id}.sigstore.json"] = KeySigner(load_private_key(key)).sign(raw)
    return f"evidence/{hex_id}.json", files


def summary(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(gate, status, reason) of every gate of one decision, in order."""
    return [(g["gate"], g["status"], g["reason"]) for g in result["gates"]]


def votes(change: dict[str, Any]) -> list[tuple[str, str, bool, str]]:
    """(identity, decision, counted, reason) of every approval of a policy change."""
    return [(a["identity"], a["decision"], a["counted"], a["reason"]) for a in change["approvals"]]


# --- attack 1: a second identity added in the change that is being decided -----------------------

UNKNOWN_ALT = "requester-alt@example.com: signed with a key that trust/allowed_signers does not list"


def test_an_identity_added_in_the_same_change_approves_nothing(
    tmp_path: Path, team: dict[str, Person]
) -> None:
    ws = governed(tmp_path, team)
    ratified = pointer(ws)["id"]
    requester = team["requester"]
    alt = person(tmp_path / "ssh", "requester-alt@example.com")  # a second key the requester holds
    commit_as(
        ws,
        requester,
        {
            "promotions/shop-1.4.0--staging.yaml": promotion("shop-1.4.0", "staging"),
            "trust/allowed_signers": allowed_signers(*team.values(), alt),
            "trust/groups.yaml": GROUPS.replace(
                "platform-lead@example.com]", "platform-lead@example.com, requester-alt@example.com]"
            ),
        },
        "request staging; add a release manager",
    )
    approve(ws, alt, "shop-1.4.0--staging")  # on main's allowed signers and group, this would be enough
    approve(ws, alt, "--policy")
    approve(ws, requester, "--policy")

    result = reconcile(ws)
    assert (result["evidenceCommit"], result["ratification"], result["policy"]) == (None, None, ratified)
    staging = decision(result, "shop-1.4.0--staging")
    assert (staging["decision"], staging["evidence"], staging["problem"]) == ("pending", None, None)
    assert summary(staging) == [
        ("environment-order", "pass", "soaked"),
        ("freeze-window", "pass", "not-frozen"),
        ("approvals", "pending", "awaiting-approvals"),
        ("quota", "pass", "no-limit"),
    ]
    approvals = gate(staging, "approvals")
    assert approvals["facts"] == {
        "approvers": [],
        "canApprove": ["platform-lead@example.com", "release-manager@example.com"],
        "ignored": [
            {"identity": "requester-alt@example.com", "message": UNKNOWN_ALT, "reason": "unknown-key"}
        ],
        "rejected": [],
        "required": 1,
    }
    assert approvals["message"] == (
        "0 of 1 approval(s); can approve: platform-lead@example.com, release-manager@example.com "
        f"(not counted: {UNKNOWN_ALT})"
    )

    change = result["policyChange"]
    assert {k: change[k] for k in ("ratified", "state", "reason", "changed", "authors", "required")} == {
        "ratified": ratified,
        "state": "pending",
        "reason": "awaiting-approvals",
        "changed": ["trust/allowed_signers", "trust/groups.yaml"],
        "authors": ["requester@example.com"],
        "required": 2,
    }
    assert (change["approvers"], change["canApprove"]) == (
        [],
        ["admin-1@example.com", "admin-2@example.com", "admin-3@example.com"],
    )
    assert votes(change) == [
        ("requester-alt@example.com", "approve", False, "unknown-key"),
        ("requester@example.com", "approve", False, "not-in-group"),
    ]

    plan = ws.stella("plan", "-o", "json")
    assert plan.code == 1, plan.out + plan.err
    assert plan.json()["policyChange"] == change
    assert decision(plan.json(), "shop-1.4.0--staging") == staging
    status = ws.stella("policy", "status", "-o", "json")
    assert status.code == 1, status.out + status.err
    assert {k: v for k, v in status.json().items() if k != "change"} == {
        "ratified": ratified,
        "proposed": change["proposed"],
        "genesisPending": False,
        "ignored": [],
    }
    assert status.json()["change"] == change
    text = ws.stella("policy", "status")
    assert text.code == 1
    assert "  changed: trust/allowed_signers\n  changed: trust/groups.yaml\n" in text.out
    assert f"approve by requester-alt@example.com (not counted: unknown-key: {UNKNOWN_ALT})" in text.out


# --- attack 2: an evidence key added on main signs a whole record ----------------------------------


def test_a_record_signed_with_a_key_added_on_main_is_reported(
    tmp_path: Path, team: dict[str, Person]
) -> None:
    ws = governed(tmp_path, team)
    ratified = pointer(ws)["id"]
    evil = tmp_path / "evil" / "evidence.pem"
    generate_key(evil)
    commit_as(
        ws,
        team["requester"],
        {"trust/evidence-keys/ci.pub": evil.with_name("evidence.pem.pub").read_bytes()},
        "trust the CI key for evidence",
    )
    path, files = forge_staging_allow(ws, evil)
    change_evidence(ws, files, "stella: 1 decision(s)")
    hint = KeySigner(load_private_key(evil)).hint
    expected = [
        {
            "check": "signature",
            "commit": None,
            "file": path,
            "message": f"signed by a key (hint {hint}) that policy {ratified} does not hold as an evidence key",
        }
    ]

    run = ws.stella("audit", "verify", "-o", "json")
    assert run.code == 1, run.out + run.err
    report = run.json()
    assert (report["ok"], report["findings"], report["policies"]) == (False, expected, [ratified])
    assert "sha256:" + path.removeprefix("evidence/").removesuffix(".json") not in report["verifiedBy"]
    text = ws.stella("audit", "verify")
    assert text.code == 1 and f"FAIL {path}: signed by a key (hint {hint})" in text.out

    packet = tmp_path / "export" / "evidence.tar.gz"
    exported = ws.stella("audit", "export", packet)
    assert exported.code == 0, exported.err
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    shutil.copy(packet, auditor / "packet.tar.gz")
    run = offline([STELLA, "audit", "verify", "--packet", "packet.tar.gz", "-o", "json"], auditor)
    assert run.code == 1, run.out + run.err
    assert (run.json()["ok"], run.json()["findings"]) == (False, expected)

    plan = ws.stella("plan", "-o", "json")  # the reconciler does not believe it either
    (ignored,) = plan.json()["ignored"]
    assert (
        ignored.startswith(f"{path}: ") and f"unknown key: the hint '{hint}' names no trusted key" in ignored
    )


# --- attack 3: an unsigned "allowed in staging" record -----------------------------------------------


def test_an_unsigned_record_does_not_open_the_next_environment(
    tmp_path: Path, team: dict[str, Person]
) -> None:
    environments = {**ENVIRONMENTS, "prod": environment("prod", promotes_from="staging")}  # order is all
    ws = governed(tmp_path, team, environments)
    commit_as(
        ws, team["requester"], {"promotions/shop-1.4.0--prod.yaml": promotion("shop-1.4.0", "prod")}, "prod"
    )
    path, files = forge_staging_allow(ws, None)
    change_evidence(ws, files, "stella: 1 decision(s)")

    result = reconcile(ws)
    assert result["evidenceCommit"] is None
    prod = decision(result, "shop-1.4.0--prod")
    assert (prod["decision"], prod["evidence"]) == ("pending", None)
    assert summary(prod) == [
        ("environment-order", "pending", "not-in-prior-environment"),
        ("freeze-window", "pass", "not-frozen"),
        ("approvals", "pass", "no-approvals-required"),
        ("quota", "pass", "no-limit"),
    ]
    assert gate(prod, "environment-order")["message"] == (
        "release shop-1.4.0 has not been allowed in staging yet; prod promotes from staging"
    )
    (ignored,) = result["ignored"]
    assert ignored.startswith(f"{path}: ") and ignored.endswith("no signature bundle")
    assert records(ws, "release_decision", "prod") == []


# --- attack 4: evidence.ref moved on main ------------------------------------------------------------

TRAIL = "refs/heads/audit/trail"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitDaemon]:
    server = start_git_daemon(tmp_path_factory.mktemp("served"))
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Pushed:
    code: int
    stderr: str

    @property
    def rejected(self) -> list[str]:
        """The guard's lines, as the pusher sees them."""
        lines = (line.removeprefix("remote: ").rstrip() for line in self.stderr.splitlines())
        return [line for line in lines if line.startswith("stella: rejected: ")]


def push(cwd: Path, *args: str) -> Pushed:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    done = subprocess.run(
        ["git", "push", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    return Pushed(done.returncode, done.stderr)


def remote_refs(cwd: Path, url: str) -> dict[str, str]:
    lines = git(cwd, "ls-remote", url).splitlines()
    return {ref: oid for oid, ref in (line.split("\t") for line in lines)}


def denied_in_staging(tmp_path: Path, team: dict[str, Person], evidence_ref: str = EVIDENCE) -> Workspace:
    """The governed workspace where a release manager's reject denied shop-1.4.0--staging."""
    ws = governed(tmp_path, team, evidence_ref=evidence_ref)
    commit_as(
        ws,
        team["requester"],
        {"promotions/shop-1.4.0--staging.yaml": promotion("shop-1.4.0", "staging")},
        "staging",
    )
    approve(ws, team["release-manager"], "shop-1.4.0--staging", "--reject", "--comment", "not this one")
    denied = decision(reconcile(ws), "shop-1.4.0--staging")
    assert (denied["decision"], gate(denied, "approvals")["reason"]) == ("deny", "rejected")
    return ws


def move_evidence_ref(ws: Workspace, who: Person, old: str = EVIDENCE, new: str = TRAIL) -> None:
    """A commit on main that names another evidence ref in stella.yaml."""
    settings = (ws.root / "stella.yaml").read_text()
    assert f"evidence: {{ref: {old}}}" in settings
    commit_as(ws, who, {"stella.yaml": settings.replace(old, new)}, f"keep evidence on {new}")


def test_moving_evidence_ref_on_main_does_not_move_the_guard(
    tmp_path: Path, team: dict[str, Person], daemon: GitDaemon
) -> None:
    ws = denied_in_staging(tmp_path, team)
    bare = daemon.base / f"{tmp_path.name}.git"
    git(daemon.base, "init", "-q", "--bare", "-b", "main", str(bare))
    assert stella("hook", "install", bare).code == 0
    url = daemon.url(bare.name)
    pushed = push(ws.root, url, "main", EVIDENCE)
    assert (pushed.code, pushed.rejected) == (0, []), pushed.stderr

    git(tmp_path, "clone", "-q", url, "clone")
    clone = tmp_path / "clone"
    git(clone, "branch", "-q", "stella/evidence", "origin/stella/evidence")
    move_evidence_ref(Workspace(clone, ws.key), team["requester"])
    pushed = push(clone, "origin", "main")
    assert (pushed.code, pushed.rejected) == (0, []), pushed.stderr
    assert TRAIL not in remote_refs(clone, url)

    head = git(clone, "rev-parse", "stella/evidence")
    rewound = git(clone, "rev-parse", "stella/evidence~1")  # the branch before the deny
    pushed = push(clone, "origin", "--force", f"{rewound}:{EVIDENCE}")
    assert pushed.code != 0
    assert pushed.rejected == [
        f"stella: rejected: {EVIDENCE} (commit {rewound[:12]}): not a fast-forward of {head[:12]}; "
        "the evidence ref only moves forward"
    ], pushed.stderr
    pushed = push(clone, "origin", f":{EVIDENCE}")
    assert pushed.code != 0
    assert pushed.rejected == [
        f"stella: rejected: {EVIDENCE} (commit {head[:12]}): the evidence ref cannot be deleted; "
        "it only moves forward"
    ], pushed.stderr
    assert remote_refs(clone, url)[EVIDENCE] == head


def test_moving_evidence_ref_on_main_does_not_move_the_reconciler(
    tmp_path: Path, team: dict[str, Person]
) -> None:
    ws = denied_in_staging(tmp_path, team)
    head = ws.git("rev-parse", EVIDENCE)
    rewound = ws.git("rev-parse", f"{EVIDENCE}~1")  # the branch before the deny
    move_evidence_ref(ws, team["requester"])
    commit_as(ws, team["requester"], {"promotions/shop-1.4.0--qa.yaml": promotion("shop-1.4.0", "qa")}, "qa")

    result = reconcile(ws)
    assert [(d["promotion"], d["decision"]) for d in result["decisions"]] == [("shop-1.4.0--qa", "allow")]
    assert ws.git("rev-parse", EVIDENCE) == result["evidenceCommit"]
    assert ws.git("rev-parse", f"{EVIDENCE}~1") == head
    assert not ws.git("for-each-ref", TRAIL)
    change = result["policyChange"]
    assert (change["state"], change["reason"], change["changed"]) == (
        "blocked",
        "evidence-ref-fixed",
        ["stella.yaml"],
    )
    assert change["message"] == (
        f"the change moves evidence.ref to {TRAIL}; the evidence ref is fixed by the genesis "
        "(a new ref needs a new genesis)"
    )

    # the commands that read the evidence read the chain's ref too
    why = ws.stella("why", "shop-1.4.0--staging", "-o", "json")
    assert (why.code, why.json()["recorded"], why.json()["result"]) == (1, True, "deny"), why.out + why.err
    verified = ws.stella("audit", "verify", "-o", "json")
    assert (verified.code, verified.json()["ref"], verified.json()["records"]) == (0, EVIDENCE, 4)
    exported = ws.stella("audit", "export", tmp_path / "evidence.tar.gz", "-o", "json")
    assert (exported.code, exported.json()["ref"], exported.json()["head"]) == (
        0,
        EVIDENCE,
        result["evidenceCommit"],
    )

    # the history without the deny, under the ref that main's stella.yaml now names (anyone may push it)
    ws.git("update-ref", TRAIL, rewound)
    before = ws.git("rev-parse", EVIDENCE)
    again = reconcile(ws)
    # nothing is decided again (staging's deny stays final), nothing is written, on either ref
    assert (
        [(d["promotion"], d["decision"]) for d in again["decisions"]],
        again["evidenceCommit"],
        ws.git("rev-parse", EVIDENCE),
        ws.git("rev-parse", TRAIL),
    ) == ([], None, before, rewound)


def test_a_copy_of_the_chain_under_the_default_ref_moves_no_fresh_reconciler(
    tmp_path: Path, team: dict[str, Person], daemon: GitDaemon
) -> None:
    """The chain lives on a ref of its own, named by the genesis' stella.yaml; main's stella.yaml is changed
    to name the default evidence ref, and the chain without its deny is put there. The guard refuses the
    copy; where no guard is in the way (a forge protecting the chain's ref only), a reconciler on a fresh
    clone (nothing pinned) still decides on the chain's ref."""
    audit = "refs/heads/stella/audit"
    ws = denied_in_staging(tmp_path, team, evidence_ref=audit)
    bare = daemon.base / f"{tmp_path.name}.git"
    git(daemon.base, "init", "-q", "--bare", "-b", "main", str(bare))
    assert stella("hook", "install", bare).code == 0
    url = daemon.url(bare.name)
    pushed = push(ws.root, url, "main", audit)
    assert (pushed.code, pushed.rejected) == (0, []), pushed.stderr
    head = ws.git("rev-parse", audit)
    rewound = ws.git("rev-parse", f"{audit}~1")  # the chain before the deny
    move_evidence_ref(ws, team["requester"], audit, EVIDENCE)
    pushed = push(ws.root, url, "main")
    assert (pushed.code, pushed.rejected) == (0, []), pushed.stderr

    pushed = push(ws.root, url, f"{rewound}:{EVIDENCE}")
    assert pushed.code != 0
    (line,) = pushed.rejected
    assert line.startswith(
        f"stella: rejected: {EVIDENCE}: policy/stella.policy.json (commit {rewound[:12]}): "
        f"a new policy chain while {audit} holds one"
    ), pushed.stderr
    assert EVIDENCE not in remote_refs(ws.root, url)

    git(tmp_path, "clone", "-q", url, "fresh")
    fresh = Workspace(tmp_path / "fresh", ws.key)
    fresh.git("branch", "-q", "stella/audit", "origin/stella/audit")
    fresh.git("update-ref", EVIDENCE, rewound)
    commit_as(
        fresh, team["requester"], {"promotions/shop-1.4.0--qa.yaml": promotion("shop-1.4.0", "qa")}, "qa"
    )
    result = reconcile(fresh)
    # staging's deny stays final, and the new decision extends the chain on its own ref
    assert (
        [(d["promotion"], d["decision"]) for d in result["decisions"]],
        fresh.git("rev-parse", EVIDENCE),
        fresh.git("rev-parse", audit),
    ) == ([("shop-1.4.0--qa", "allow")], rewound, result["evidenceCommit"])
    assert fresh.git("rev-parse", f"{audit}~1") == head


# --- attack 5: approvals for canary, the promotion edited to prod ------------------------------------


def test_approvals_for_canary_do_not_allow_prod(tmp_path: Path, team: dict[str, Person]) -> None:
    environments = {
        "dev": environment("dev"),
        "canary": environment("canary", approvals=2),
        "prod": environment("prod", promotes_from="dev", approvals=2),
    }
    ws = governed(tmp_path, team, environments)
    requester, manager, lead = team["requester"], team["release-manager"], team["platform-lead"]
    pid = "shop-1.4.0--canary"
    commit_as(ws, requester, {f"promotions/{pid}.yaml": promotion("shop-1.4.0", "canary")}, "canary")
    approve(ws, manager, pid)  # writes environment: canary
    release_id = json.loads(ws.show("releases/shop-1.4.0.json"))["id"]
    legacy = (  # an approval as written before approvals named their environment
        f"apiVersion: stella/v1\nkind: Approval\npromotion: {pid}\nrelease: {release_id}\ndecision: approve\n"
    )
    commit_as(ws, lead, {f"approvals/{pid}/{lead.identity}.yaml": legacy}, f"approve {pid}")
    plan = ws.stella("plan", "-o", "json")
    assert (plan.code, decision(plan.json(), pid)["decision"]) == (0, "allow")  # enough for canary

    commit_as(ws, requester, {f"promotions/{pid}.yaml": promotion("shop-1.4.0", "prod")}, "prod, actually")
    result = reconcile(ws)
    assert result["evidenceCommit"] is None
    edited = decision(result, pid)
    assert (edited["environment"], edited["decision"], edited["evidence"]) == ("prod", "pending", None)
    approvals = gate(edited, "approvals")
    assert (approvals["status"], approvals["reason"]) == ("pending", "awaiting-approvals")
    assert approvals["facts"]["approvers"] == []
    assert approvals["facts"]["ignored"] == [
        {
            "identity": lead.identity,
            "reason": "stale",
            "message": f"{lead.identity}'s approval was committed before the promotion file's last change; "
            "approve again",
        },
        {
            "identity": manager.identity,
            "reason": "environment-mismatch",
            "message": f"{manager.identity} approved environment canary, not prod",
        },
    ]

    approve(ws, manager, pid)  # approving again, after the change, for prod
    approve(ws, lead, pid)
    allowed = decision(reconcile(ws), pid)
    assert (allowed["environment"], allowed["decision"]) == ("prod", "allow")
    assert gate(allowed, "approvals")["message"] == f"approved by {lead.identity}, {manager.identity}"
    assert records(ws, "release_decision", "canary") == []


# --- attack 6: a template that takes the host ---------------------------------------------------------

BACKDOOR_IMAGE = "registry.example.com/tools/shell@sha256:" + "b" * 64
BACKDOOR = f"""\
  backdoor:
    image: {BACKDOOR_IMAGE}
    privileged: true
    volumes:
      - /:/host
      - /var/run/docker.sock:/var/run/docker.sock
"""


def _any_line(message: str) -> str:
    """The message with its line number in the lock left out (it moves with the example template)."""
    return re.sub(r"\(line \d+\)", "(line _)", message)


def test_a_template_that_takes_the_host_is_not_used_then_not_rendered(
    tmp_path: Path, team: dict[str, Person]
) -> None:
    allowed = f"allowedImages: ['{BACKDOOR_IMAGE}']\n"
    ws = governed(
        tmp_path,
        team,
        {
            "dev": environment("dev"),
            "qa": environment("qa"),
            # each allows a little more, and is refused for the next thing the service takes
            "ops-1": environment("ops-1", extra=allowed),
            "ops-2": environment("ops-2", extra=allowed + "hostAccess: {privileged: true}"),
            "ops-3": environment(
                "ops-3", extra=allowed + "hostAccess: {privileged: true, dockerSocket: true}"
            ),
        },
    )
    template = (ws.root / TEMPLATE).read_text()
    commit_as(ws, team["requester"], {TEMPLATE: template + BACKDOOR}, "a shell for debugging")
    write_files(
        ws.root,
        {
            "releases/shop-1.3.0.yaml": RELEASE_130,
            "promotions/shop-1.3.0--dev.yaml": promotion("shop-1.3.0", "dev"),
        },
    )
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "shop-1.3.0 to dev")

    # unratified: the decision renders the ratified template
    result = reconcile(ws)
    change = result["policyChange"]
    assert (change["state"], change["reason"], change["changed"]) == (
        "pending",
        "awaiting-approvals",
        [TEMPLATE],
    )
    dev = decision(result, "shop-1.3.0--dev")
    assert dev["decision"] == "allow"
    (artifact,) = statement(ws, dev["evidence"])["predicate"]["artifacts"]
    lock = ws.show(f"artifacts/{artifact['sha256']}/{artifact['name']}").decode()
    assert "backdoor" not in lock and "privileged" not in lock and "docker.sock" not in lock

    # ratified through governance: it is used, and refused at rendering
    approve(ws, team["admin-1"], "--policy")
    approve(ws, team["admin-2"], "--policy")
    write_files(
        ws.root,
        {
            f"promotions/shop-1.3.0--{env}.yaml": promotion("shop-1.3.0", env)
            for env in ("qa", "ops-1", "ops-2", "ops-3")
        },
    )
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "shop-1.3.0 to qa and ops")
    result = reconcile(ws, code=2)
    assert result["ratification"] is not None
    assert pointer(ws) == {"id": change["proposed"], "record": result["ratification"]}
    assert result["policy"] == change["proposed"] and result["policyChange"]["state"] == "ratify"
    where = f"{TEMPLATE}: compose.stella.lock.yml"
    why = {
        "qa": f"(line 22): service 'backdoor': image '{BACKDOOR_IMAGE}' is neither a component of release "
        "shop-1.3.0 nor in the environment's allowedImages",
        "ops-1": "(line 23): service 'backdoor': 'privileged: true' needs hostAccess.privileged",
        "ops-2": "(line 25): service 'backdoor': 'volumes' binds host path '/', which exposes the container "
        "engine socket /var/run/docker.sock: needs hostAccess.dockerSocket",
        "ops-3": "(line 25): service 'backdoor': 'volumes' binds host path '/', which is outside "
        "hostAccess.hostPaths (none)",
    }
    assert sorted((p["file"], _any_line(p["message"])) for p in result["problems"]) == sorted(
        (f"promotions/shop-1.3.0--{env}.yaml", _any_line(f"{where} {message}"))
        for env, message in why.items()
    )
    assert sorted(
        (d["promotion"], d["decision"], d["evidence"], d["gates"]) for d in result["decisions"]
    ) == [(f"shop-1.3.0--{env}", "error", None, []) for env in sorted(why)]
    assert [records(ws, "release_decision", env) for env in why] == [[], [], [], []]
    assert not [f for f in ws.evidence_files() if f.startswith(("environments/qa/", "environments/ops-"))]
    replayed = ws.stella("replay", "--all", "-o", "json")  # shop-1.3.0--dev was decided with a change pending
    assert (replayed.code, replayed.json()["identical"]) == (0, True), replayed.out


# --- proper flows: ratifying a change; rotating the evidence key; a pinned genesis ----------------------


def test_a_change_ratified_by_two_admins_lets_its_new_approver_count(
    tmp_path: Path, team: dict[str, Person]
) -> None:
    ws = governed(tmp_path, team)
    genesis = pointer(ws)
    newbie = person(tmp_path / "ssh", "newbie@example.com")
    author, requester = team["admin-1"], team["requester"]
    commit_as(
        ws,
        author,
        {
            "trust/allowed_signers": allowed_signers(*team.values(), newbie),
            "trust/groups.yaml": GROUPS.replace(
                "platform-lead@example.com]", "platform-lead@example.com, newbie@example.com]"
            ),
        },
        "newbie joins the release managers",
    )
    approve(ws, author, "--policy")  # the author's own approval
    status = ws.stella("policy", "status", "-o", "json")
    assert status.code == 1
    change = status.json()["change"]
    assert (change["state"], change["reason"], change["authors"]) == (
        "pending",
        "awaiting-approvals",
        [author.identity],
    )
    assert votes(change) == [(author.identity, "approve", False, "self-approval")]
    assert (
        change["approvals"][0]["message"] == f"{author.identity} changed governed files and cannot approve it"
    )
    assert change["canApprove"] == ["admin-2@example.com", "admin-3@example.com"]

    approve(ws, team["admin-2"], "--policy", "--comment", "welcome")
    approve(ws, team["admin-3"], "--policy")
    commit_as(
        ws, requester, {"promotions/shop-1.4.0--staging.yaml": promotion("shop-1.4.0", "staging")}, "staging"
    )
    approve(ws, newbie, "shop-1.4.0--staging")
    plan = ws.stella("plan", "-o", "json")  # a dry run ratifies first too, and writes nothing
    assert (plan.code, decision(plan.json(), "shop-1.4.0--staging")["decision"]) == (0, "allow"), plan.out
    assert pointer(ws) == genesis

    result = reconcile(ws)
    proposed = result["policyChange"]["proposed"]
    ratification = result["ratification"]
    assert (result["policy"], result["policyChange"]["state"]) == (proposed, "ratify")
    assert pointer(ws) == {"id": proposed, "record": ratification}
    predicate = statement(ws, ratification)["predicate"]
    assert (predicate["type"], predicate["reason"], predicate["previous"]) == (
        "policy_ratification",
        "approved",
        genesis["record"],
    )
    assert predicate["policy"] == {
        "id": proposed,
        "previous": genesis["id"],
        "changed": ["trust/allowed_signers", "trust/groups.yaml"],
    }
    assert [
        (a["identity"], a["counted"], a["reason"], a["comment"]) for a in predicate["actors"]["approvers"]
    ] == [
        (author.identity, False, "self-approval", ""),
        ("admin-2@example.com", True, "counted", "welcome"),
        ("admin-3@example.com", True, "counted", ""),
    ]
    staging = decision(result, "shop-1.4.0--staging")
    assert staging["decision"] == "allow"
    approvals = gate(staging, "approvals")
    assert (approvals["status"], approvals["reason"], approvals["message"]) == (
        "pass",
        "approved",
        "approved by newbie@example.com",
    )
    assert statement(ws, staging["evidence"])["predicate"]["policy"] == {
        "id": proposed,
        "record": ratification,
    }
    after = ws.stella("policy", "status", "-o", "json")
    assert (after.code, after.json()["ratified"], after.json()["change"]) == (0, proposed, None)


@dataclass
class Rotated:
    """A workspace whose evidence key went K1 -> K1+K2 -> K2 through two ratified changes."""

    ws: Workspace
    policies: list[str]
    """P0 (genesis: K1), P1 (K1, K2), P2 (K2)."""
    records: dict[str, str]
    """name -> evidence id: genesis, dev-1 (P0, K1), ratify-1 (K1), dev-2 (P1, K1), ratify-2 (K2), qa (P2, K2)."""
    refused: Run
    """A pass signing with K1 after K1 was retired."""


def _ratify(
    ws: Workspace, team: dict[str, Person], files: dict[str, str | bytes | None], message: str
) -> None:
    commit_as(ws, team["admin-1"], files, message)
    approve(ws, team["admin-2"], "--policy")
    approve(ws, team["admin-3"], "--policy")


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> Rotated:
    tmp_path = tmp_path_factory.mktemp("rotated")
    team = {role: person(tmp_path / "ssh", f"{role}@example.com") for role in ROLES}
    ws = governed(tmp_path, team)
    genesis = pointer(ws)
    (dev_1,) = records(ws, "release_decision", "dev")
    k2 = tmp_path / "k2" / "evidence.pem"
    generate_key(k2)

    _ratify(ws, team, {"trust/evidence-keys/k2.pub": k2.with_name("evidence.pem.pub").read_bytes()}, "add K2")
    write_files(
        ws.root,
        {
            "releases/shop-1.3.0.yaml": RELEASE_130,
            "promotions/shop-1.3.0--dev.yaml": promotion("shop-1.3.0", "dev"),
        },
    )
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "shop-1.3.0 to dev")
    first = reconcile(ws)  # still K1
    dev_2 = decision(first, "shop-1.3.0--dev")["evidence"]

    _ratify(ws, team, {"trust/evidence-keys/test.pub": None}, "retire K1")
    write_files(ws.root, {"promotions/shop-1.3.0--qa.yaml": promotion("shop-1.3.0", "qa")})
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "shop-1.3.0 to qa")
    before = ws.git("rev-parse", EVIDENCE)
    refused = ws.stella("reconcile", "--once")  # still K1, which the new policy no longer holds
    assert ws.git("rev-parse", EVIDENCE) == before
    ws.key = k2  # STELLA_SIGNING_KEY from now on
    second = reconcile(ws)
    return Rotated(
        ws,
        [genesis["id"], first["policy"], second["policy"]],
        {
            "genesis": genesis["record"],
            "dev-1": dev_1,
            "ratify-1": first["ratification"],
            "dev-2": dev_2,
            "ratify-2": second["ratification"],
            "qa": decision(second, "shop-1.3.0--qa")["evidence"],
        },
        refused,
    )


def test_a_rotated_evidence_key_keeps_every_older_record_verifying(rotated: Rotated) -> None:
    p0, p1, p2 = rotated.policies
    ids = rotated.records
    assert len(set(rotated.policies)) == 3 and len(set(ids.values())) == 6 and all(ids.values())
    assert rotated.refused.code == 2, rotated.refused.out + rotated.refused.err
    assert (
        "is not an evidence key of the policy this record must verify under "
        "(its keys: trust/evidence-keys/k2.pub)" in rotated.refused.err
    )
    run = rotated.ws.stella("audit", "verify", "-o", "json")
    assert run.code == 0, run.out
    report = run.json()
    assert (report["ok"], report["findings"], report["records"], report["bundles"]) == (True, [], 6, 6)
    assert (report["genesis"], report["rootPinned"], report["policies"], report["policy"]) == (
        ids["genesis"],
        False,
        [p0, p1, p2],
        p2,
    )
    k1, k2 = "trust/evidence-keys/test.pub", "trust/evidence-keys/k2.pub"
    assert report["verifiedBy"] == {
        ids["genesis"]: f"{p0}: {k1}",
        ids["dev-1"]: f"{p0}: {k1}",
        ids["ratify-1"]: f"{p0}: {k1}",
        ids["dev-2"]: f"{p1}: {k1}",
        ids["ratify-2"]: f"{p1}: {k2}",
        ids["qa"]: f"{p2}: {k2}",
    }
    assert report["identities"] == 4  # the admins' signed approvals of both changes, re-verified
    replayed = rotated.ws.stella("replay", "--all", "-o", "json")
    assert (replayed.code, replayed.json()["identical"]) == (0, True), replayed.out


def test_a_packet_verifies_offline_against_its_pinned_genesis(rotated: Rotated, tmp_path: Path) -> None:
    packet = tmp_path / "export" / "evidence.tar.gz"
    exported = rotated.ws.stella("audit", "export", packet)
    assert exported.code == 0, exported.err
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    shutil.copy(packet, auditor / "packet.tar.gz")
    genesis = rotated.records["genesis"]

    def verify(*args: str) -> Run:
        return offline([STELLA, "audit", "verify", "--packet", "packet.tar.gz", *args], auditor)

    run = verify("--root", genesis, "-o", "json")
    assert run.code == 0, run.out + run.err
    report = run.json()
    assert (report["ok"], report["findings"], report["genesis"], report["rootPinned"]) == (
        True,
        [],
        genesis,
        True,
    )
    assert (report["policies"], len(report["verifiedBy"])) == (rotated.policies, 6)
    text = verify("--root", genesis)
    assert text.code == 0
    assert f"policy chain from the pinned root {genesis}: 3 ratified" in text.out

    made_up, not_the_genesis = "sha256:" + "0" * 64, rotated.records["ratify-1"]
    for wrong in (made_up, not_the_genesis):
        run = verify("--root", wrong, "-o", "json")
        assert run.code == 1, run.out + run.err
        report = run.json()
        assert (report["ok"], report["genesis"], report["rootPinned"]) == (False, None, True)
        finding = {
            "check": "policy",
            "commit": None,
            "file": f"evidence/{wrong.removeprefix('sha256:')}.json",
            "message": f"the pinned root {wrong} is not a genesis ratification on this branch",
        }
        assert finding in report["findings"]
    assert sorted(p.name for p in auditor.iterdir()) == ["packet.tar.gz"]  # nothing left behind

    replayed = rotated.ws.stella("replay", "--all", "--root", genesis, "-o", "json")
    assert (replayed.code, replayed.json()["identical"], len(replayed.json()["records"])) == (0, True, 6)
    replayed = rotated.ws.stella("replay", "--all", "--root", not_the_genesis)
    assert replayed.code == 1
    assert " ".join(replayed.err.split()) == (
        f"error: the policy chain on {EVIDENCE} starts at {genesis}, not at the pinned root {not_the_genesis}"
    )
