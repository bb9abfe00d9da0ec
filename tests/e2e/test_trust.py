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
GOVERNANCE = "governance: {required: 2, groups: [policy-admins], separationOfDuties: true}\n"
ROLES = ("requester", "release-manager", "platform-lead", "admin-1", "admin-2", "admin-3")
GROUPS = """\
apiVersion: stella/v1
kind: Groups
groups:
  release-managers: [release-manager@example.com, platform-lead@example.com]
  policy-admins: [admin-1@example.com, admin-2@example.com, admin-3@example.com]
"""


def environment(name: str, *, promotes_from: str | None = None, approvals: int = 0) -> str:
    """An environment rendering the example template, with no freeze windows (the tests run any day)."""
    lines = ["apiVersion: stella/v1", "kind: Environment", f"name: {name}"]
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


def approve(ws: Workspace, who: Person, *args: str) -> str:
    """`stella approve ARGS --key --identity` as `who`; the signed commit it made."""
    run = ws.stella("approve", *args, "--key", who.key, "--identity", who.identity, env=who.git_env())
    assert run.code == 0, run.out + run.err
    return ws.git("rev-parse", "HEAD")


def governed(
    tmp_path: Path, team: dict[str, Person], environments: dict[str, str] = ENVIRONMENTS
) -> Workspace:
    """example-repo/ with governance (2 of policy-admins, separation of duties), every team member in
    trust/allowed_signers, the given environments, and the genesis ratified by a first pass (which also
    allows shop-1.4.0 in dev)."""
    ws = example_workspace(tmp_path)
    settings = (ws.root / "stella.yaml").read_text() + GOVERNANCE
    for old in (ws.root / "environments").iterdir():
        old.unlink()
    write_files(
        ws.root,
        {
            "stella.yaml": settings,
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


def reconcile(ws: Workspace, *, code: int = 0, env: dict[str, str] | None = None) -> dict[str, Any]:
    run = ws.stella("reconcile", "--once", "-o", "json", env=env)
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
    """A complete "shop-1.4.0 allowed in staging" record shaped like the real dev record and naming the
    ratified policy: statement, inputs, a compose lock, staging's pointer, and (given a key) a bundle
    signed with that key over the canonical statement bytes. Returns (statement path, files)."""
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
    evidence_id = f"sha256:{hex_id}"
    current = {
        "artifacts": {artifact["name"]: sha256_hex(lock)},
        "decidedAt": predicate["decidedAt"],
        "evidence": evidence_id,
        "release": predicate["release"]["name"],
        "releaseId": predicate["release"]["id"],
    }
    files: dict[str, bytes | None] = {
        f"evidence/{hex_id}.json": raw,
        f"inputs/{sha256_hex(inputs_bytes)}.json": inputs_bytes,
        f"artifacts/{sha256_hex(lock)}/{artifact['name']}": lock,
        "environments/staging/stella.version.json": canonical(
            {"current": current, "environment": "staging", "head": evidence_id}
        ),
    }
    if key is not None:
        files[f"evidence/{hex_id}.sigstore.json"] = KeySigner(load_private_key(key)).sign(raw)
    return f"evidence/{hex_id}.json", files


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


def test_moving_evidence_ref_on_main_moves_neither_guard_nor_reconciler(
    tmp_path: Path, team: dict[str, Person], daemon: GitDaemon
) -> None:
    ws = governed(tmp_path, team)
    requester = team["requester"]
    commit_as(
        ws, requester, {"promotions/shop-1.4.0--staging.yaml": promotion("shop-1.4.0", "staging")}, "staging"
    )
    approve(ws, team["release-manager"], "shop-1.4.0--staging", "--reject", "--comment", "not this one")
    denied = decision(reconcile(ws), "shop-1.4.0--staging")
    assert (denied["decision"], gate(denied, "approvals")["reason"]) == ("deny", "rejected")

    bare = daemon.base / f"{tmp_path.name}.git"
    git(daemon.base, "init", "-q", "--bare", "-b", "main", str(bare))
    assert stella("hook", "install", bare).code == 0
    url = daemon.url(bare.name)
    pushed = push(ws.root, url, "main", EVIDENCE)
    assert (pushed.code, pushed.rejected) == (0, []), pushed.stderr

    git(tmp_path, "clone", "-q", url, "clone")
    clone = Workspace(tmp_path / "clone", ws.key)
    clone.git("branch", "-q", "stella/evidence", "origin/stella/evidence")
    settings = (clone.root / "stella.yaml").read_text().replace(EVIDENCE, TRAIL)
    assert TRAIL in settings
    commit_as(clone, requester, {"stella.yaml": settings}, "keep evidence on the audit trail")
    pushed = push(clone.root, "origin", "main")
    assert (pushed.code, pushed.rejected) == (0, []), pushed.stderr

    head = clone.git("rev-parse", "stella/evidence")
    rewound = clone.git("rev-parse", "stella/evidence~1")  # before the deny
    pushed = push(clone.root, "origin", "--force", f"{rewound}:{EVIDENCE}")
    assert pushed.code != 0
    assert pushed.rejected == [
        f"stella: rejected: {EVIDENCE} (commit {rewound[:12]}): not a fast-forward of {head[:12]}; "
        "the evidence ref only moves forward"
    ], pushed.stderr
    assert remote_refs(clone.root, url)[EVIDENCE] == head

    # the history without the deny, under the name main's unratified stella.yaml gives the evidence ref
    pushed = push(clone.root, "origin", f"{rewound}:{TRAIL}")
    assert pushed.code == 0, pushed.stderr  # not an evidence ref: nothing reads it
    clone.git("fetch", "-q", "origin", f"{TRAIL}:{TRAIL}")
    commit_as(clone, requester, {"promotions/shop-1.4.0--qa.yaml": promotion("shop-1.4.0", "qa")}, "qa")
    result = reconcile(clone)
    # staging's deny is still final (not decided again), and the new decision lands on the chain's ref
    assert [(d["promotion"], d["decision"]) for d in result["decisions"]] == [("shop-1.4.0--qa", "allow")]
    assert clone.git("rev-parse", "stella/evidence") == result["evidenceCommit"]
    assert clone.git("rev-parse", "stella/evidence~1") == head
    assert clone.git("rev-parse", TRAIL) == rewound
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
    pushed = push(clone.root, "origin", EVIDENCE)
    assert (pushed.code, pushed.rejected) == (0, []), pushed.stderr
    assert remote_refs(clone.root, url)[EVIDENCE] == result["evidenceCommit"]
