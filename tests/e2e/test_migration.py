"""A repository whose evidence was written before policies existed keeps verifying, up to its genesis.

The legacy branch is made the way an older Stella wrote it: a decision record naming no policy, signed
with the evidence key of `main`, with its inputs, lock, release lock and pointer, and no policy chain.
The first pass of this version then writes the genesis on the same ref; the old record is believed
(the promotion stays decided), verifies with the genesis policy's keys, and replays.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from reconciler.evidence import canonical, sha256_hex
from reconciler.repo import Repo
from reconciler.sign import KeySigner, load_private_key
from tests.support.pipeline import Workspace, change_evidence, example_workspace
from tests.support.repos import git

LEGACY = ("releases/", "inputs/", "artifacts/", "environments/")


def _legacy_branch(tmp_path: Path) -> tuple[Workspace, str]:
    """A workspace whose evidence branch holds one legacy record (shop-1.4.0 allowed in dev)."""
    donor = example_workspace(tmp_path / "donor")
    assert donor.stella("reconcile", "--once").code == 0
    files: dict[str, bytes] = {}
    record = genesis_inputs = ""
    for path in donor.evidence_files():
        if path.startswith(LEGACY):
            files[path] = donor.show(path)
        elif path.startswith("evidence/") and not path.endswith(".sigstore.json"):
            statement = json.loads(donor.show(path))
            if statement["predicate"]["type"] != "release_decision":
                genesis_inputs = f"inputs/{statement['predicate']['inputs']['sha256']}.json"
                continue
            del statement["predicate"]["policy"]  # what an older Stella wrote
            raw = canonical(statement)
            record = f"sha256:{sha256_hex(raw)}"
            files[f"evidence/{sha256_hex(raw)}.json"] = raw
            files[f"evidence/{sha256_hex(raw)}.sigstore.json"] = KeySigner(load_private_key(donor.key)).sign(
                raw
            )
    del files[genesis_inputs]  # an older Stella wrote no ratification, nor its inputs
    pointer = json.loads(files["environments/dev/stella.version.json"])
    pointer["head"] = pointer["current"]["evidence"] = record
    files["environments/dev/stella.version.json"] = canonical(pointer)

    root = tmp_path / "legacy" / "repo"
    shutil.copytree(donor.root, root)
    shutil.rmtree(root / ".git" / "stella")  # the donor's cache and pinned ref
    git(root, "update-ref", "-d", "refs/heads/stella/evidence")
    keys = tmp_path / "legacy" / "keys"
    shutil.copytree(donor.key.parent, keys)
    ws = Workspace(root, keys / donor.key.name)
    Repo(root).commit_files("refs/heads/stella/evidence", None, files, "evidence written by an older Stella")
    return ws, record


def test_evidence_from_before_policies_verifies_up_to_the_genesis(tmp_path: Path) -> None:
    ws, legacy = _legacy_branch(tmp_path)
    before = ws.stella("audit", "verify", "-o", "json")
    assert before.code == 0, before.out
    assert (before.json()["genesis"], before.json()["verifiedBy"]) == (
        None,
        {legacy: "legacy: trust/evidence-keys/test.pub"},
    )

    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.err
    result = run.json()
    assert result["decisions"] == []  # shop-1.4.0--dev stays decided by the legacy record
    assert result["ratification"] is not None and result["ignored"] == []
    genesis = result["ratification"]

    after = ws.stella("audit", "verify", "--root", genesis, "-o", "json")
    assert after.code == 0, after.out
    report = after.json()
    assert (report["genesis"], report["policies"]) == (genesis, [result["policy"]])
    assert report["verifiedBy"][legacy] == f"{result['policy']}: trust/evidence-keys/test.pub"
    assert ws.stella("replay", "--all", "--root", genesis).code == 0


def test_a_record_naming_no_policy_after_the_genesis_is_not_believed(tmp_path: Path) -> None:
    ws, _ = _legacy_branch(tmp_path)
    assert ws.stella("reconcile", "--once").code == 0
    path = next(
        p
        for p in ws.evidence_files()
        if p.startswith("evidence/")
        and not p.endswith(".sigstore.json")
        and json.loads(ws.show(p))["predicate"]["type"] == "release_decision"
    )
    statement = json.loads(ws.show(path))  # the legacy record, made again later for qa
    assert "policy" not in statement["predicate"]
    statement["predicate"]["promotion"]["id"] = "shop-1.4.0--qa"
    statement["predicate"]["environment"] = "qa"
    statement["predicate"]["previous"] = None
    statement["predicate"]["decidedAt"] = "2099-01-01T00:00:00Z"
    raw = canonical(statement)
    hex_id = sha256_hex(raw)
    bundle = KeySigner(load_private_key(ws.key)).sign(raw)  # a key the genesis policy holds
    change_evidence(
        ws, {f"evidence/{hex_id}.json": raw, f"evidence/{hex_id}.sigstore.json": bundle}, "no policy named"
    )
    plan = ws.stella("plan", "-o", "json")
    assert (
        f"evidence/{hex_id}.json: names no policy, but was made after the genesis" in plan.json()["ignored"]
    )
    verify = ws.stella("audit", "verify", "-o", "json")
    assert verify.code == 1
    assert [(f["file"], f["check"]) for f in verify.json()["findings"]] == [
        ("environments/qa/stella.version.json", "pointer"),  # qa has a record, and no pointer
        (f"evidence/{hex_id}.json", "policy"),
    ]
