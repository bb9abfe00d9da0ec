"""`stella audit verify` finds each kind of tampering and names the file; the untouched branch is OK."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.evidence import canonical, sha256_hex
from reconciler.sign import KeySigner, generate_key, load_private_key
from tests.support.pipeline import RELEASE_130, Workspace, change_evidence, example_workspace, promotion
from tests.support.repos import commit_all, write_files


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """Two allowed decisions in dev (a chain of two records) on a copy of example-repo/."""
    ws = example_workspace(tmp_path)
    assert ws.stella("reconcile", "--once").code == 0
    write_files(
        ws.root,
        {
            "releases/shop-1.3.0.yaml": RELEASE_130,
            "promotions/shop-1.3.0--dev.yaml": promotion("shop-1.3.0", "dev"),
        },
    )
    commit_all(ws.root, "request shop-1.3.0 in dev")
    assert ws.stella("reconcile", "--once").code == 0
    return ws


def _records(ws: Workspace) -> list[str]:
    """Statement paths, oldest first (by chain order)."""
    paths = [f for f in ws.evidence_files() if f.startswith("evidence/") and not f.endswith(".sigstore.json")]
    first = next(p for p in paths if json.loads(ws.show(p))["predicate"]["previous"] is None)
    return [first] + [p for p in paths if p != first]


def test_untouched_branch_verifies(ws: Workspace) -> None:
    run = ws.stella("audit", "verify", "-o", "json")
    assert run.code == 0, run.out
    report = run.json()
    assert (report["ok"], report["records"], report["bundles"], report["findings"]) == (True, 2, 2, [])


def _edit_statement(ws: Workspace) -> str:
    path = _records(ws)[0]
    data = json.loads(ws.show(path))
    data["predicate"]["decision"]["result"] = "deny"
    change_evidence(ws, {path: canonical(data)}, "edit a statement")
    return path


def _unknown_key(ws: Workspace) -> str:
    other = ws.root.parent / "other.pem"
    generate_key(other)
    write_files(
        ws.root,
        {
            "environments/qa.yaml": "apiVersion: stella/v1\nkind: Environment\nname: qa\n",
            "promotions/shop-1.3.0--qa.yaml": promotion("shop-1.3.0", "qa"),
        },
    )
    commit_all(ws.root, "request qa")
    assert ws.stella("reconcile", "--once", env={"STELLA_SIGNING_KEY": str(other)}).code == 0
    bundles = [p for p in ws.evidence_files() if p.endswith(".sigstore.json")]
    (qa,) = [
        p
        for p in bundles
        if json.loads(ws.show(p.replace(".sigstore", "")))["predicate"]["environment"] == "qa"
    ]
    return qa


def _delete_record(ws: Workspace) -> str:
    path = _records(ws)[1]
    change_evidence(ws, {path: None}, "delete a record")
    return path


def _chain_elsewhere(ws: Workspace) -> str:
    data = json.loads(ws.show(_records(ws)[1]))
    data["predicate"]["previous"] = "sha256:" + "0" * 64
    data["predicate"]["decidedAt"] = "2030-01-01T00:00:00Z"
    statement = canonical(data)
    hex_id = sha256_hex(statement)
    signer = KeySigner(load_private_key(ws.key))
    change_evidence(
        ws,
        {f"evidence/{hex_id}.json": statement, f"evidence/{hex_id}.sigstore.json": signer.sign(statement)},
        "add a record whose chain link points elsewhere",
    )
    return f"evidence/{hex_id}.json"


def _rewrite(ws: Workspace) -> str:
    parent = ws.git("rev-parse", "refs/heads/stella/evidence~1")
    ws.git("update-ref", "-m", "rewrite", "refs/heads/stella/evidence", parent)
    return "refs/heads/stella/evidence"


CASES: dict[str, tuple[Callable[[Workspace], str], str]] = {
    "statement-edited": (_edit_statement, "changed after it was written"),
    "unknown-key": (_unknown_key, "no trusted key"),
    "record-deleted": (_delete_record, "deleted from the evidence branch"),
    "chain-link-elsewhere": (_chain_elsewhere, "chain link points to sha256:0000"),
    "branch-rewritten": (_rewrite, "not a fast-forward"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_tampering_is_found(ws: Workspace, case: tuple[Callable[[Workspace], str], str]) -> None:
    tamper, expected = case
    path = tamper(ws)
    run = ws.stella("audit", "verify", "-o", "json")
    assert run.code == 1, run.out
    findings = run.json()["findings"]
    assert any(f["file"] == path and expected in f["message"] for f in findings), findings
    text = ws.stella("audit", "verify")
    assert text.code == 1 and f"FAIL {path}" in text.out
