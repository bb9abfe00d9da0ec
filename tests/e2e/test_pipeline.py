"""The decision pipeline end to end: promote, reconcile, and find signed, content-addressed evidence."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from reconciler.evidence import sha256_hex
from reconciler.sign import generate_key
from tests.support.pipeline import Workspace, decision_records, example_workspace
from tests.support.registry import ImagePusher, RegistryServer, skopeo_digest
from tests.support.repos import SETTINGS, commit_all, make_repo

ROOT = Path(__file__).resolve().parents[2]
VERIFY_JS = ROOT / "tests" / "js" / "verify-bundle.js"


@pytest.mark.registry
def test_promote_reconcile_against_the_registry(
    tmp_path: Path, registry: RegistryServer, push_image: ImagePusher
) -> None:
    web = push_image("shop/web", "3.0", content=b"web 3\n")
    worker = push_image("shop/worker", "3.0", content=b"worker 3\n", multi_arch=True)
    key = tmp_path / "evidence.pem"
    generate_key(key)
    root = make_repo(
        tmp_path / "repo",
        {
            "stella.yaml": SETTINGS,
            "environments/dev.yaml": "apiVersion: stella/v1\nkind: Environment\nname: dev\n",
            "releases/shop-3.0.yaml": "apiVersion: stella/v1\nkind: Release\nname: shop-3.0\ncomponents:\n"
            f"  web: {{image: {web.ref}}}\n  worker: {{image: {worker.ref}}}\n",
            "trust/evidence-keys/ci.pub": key.with_name("evidence.pem.pub").read_bytes(),
        },
    )
    ws = Workspace(root, key)
    promoted = ws.stella("promote", "shop-3.0", "--to", "dev", "--reason", "first", "-o", "json")
    assert promoted.code == 0, promoted.err
    assert promoted.json()["branch"] == "promote/shop-3.0--dev"
    ws.git("merge", "--no-ff", "-q", "-m", "Merge promote/shop-3.0--dev", "promote/shop-3.0--dev")

    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.err
    (decision,) = run.json()["decisions"]
    assert decision["decision"] == "allow"
    evidence_hex = decision["evidence"].removeprefix("sha256:")

    statement = ws.show(f"evidence/{evidence_hex}.json")
    assert sha256_hex(statement) == evidence_hex
    predicate = json.loads(statement)["predicate"]
    inputs_hex = predicate["inputs"]["sha256"]
    assert sha256_hex(ws.show(f"inputs/{inputs_hex}.json")) == inputs_hex
    (artifact,) = predicate["artifacts"]
    lock_bytes = ws.show(f"artifacts/{artifact['sha256']}/compose.stella.lock.yml")
    assert sha256_hex(lock_bytes) == artifact["sha256"]
    services = yaml.safe_load(lock_bytes)["services"]
    assert services["web"]["image"] == f"{registry.host}/shop/web@{skopeo_digest(web.ref)}"
    assert services["worker"]["image"] == f"{registry.host}/shop/worker@{skopeo_digest(worker.ref)}"

    bundle = tmp_path / "bundle.sigstore.json"
    bundle.write_bytes(ws.show(f"evidence/{evidence_hex}.sigstore.json"))
    node = subprocess.run(
        ["node", str(VERIFY_JS), str(bundle), str(key.with_name("evidence.pem.pub"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (node.returncode, node.stdout.strip()) == (0, "OK"), node.stderr
    assert json.loads(bundle.read_bytes())["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    assert ws.stella("audit", "verify").code == 0


def test_pending_is_not_evidence_and_plan_writes_nothing(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    ws.git("checkout", "-q", "-b", "request")
    (ws.root / "promotions" / "shop-1.4.0--staging.yaml").write_text(
        "apiVersion: stella/v1\nkind: Promotion\nrelease: shop-1.4.0\nenvironment: staging\n"
    )
    commit_all(ws.root, "request staging")
    plan = ws.stella("plan", "-o", "json")
    assert plan.code == 1
    assert {d["promotion"]: d["decision"] for d in plan.json()["decisions"]} == {
        "shop-1.4.0--dev": "allow",
        "shop-1.4.0--staging": "pending",
    }
    assert ws.git("for-each-ref", "refs/heads/stella") == ""
    markdown = ws.stella("plan", "--base", "main", "-o", "markdown")
    assert "`shop-1.4.0--staging` → `staging`: **pending**" in markdown.out
    assert "shop-1.4.0--dev" not in markdown.out
    ws.git("checkout", "-q", "main")
    ws.git("merge", "-q", "request")
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.err
    decisions = {d["promotion"]: d for d in run.json()["decisions"]}
    assert decisions["shop-1.4.0--dev"]["decision"] == "allow"
    assert decisions["shop-1.4.0--staging"]["decision"] == "pending"
    assert decisions["shop-1.4.0--staging"]["evidence"] is None
    statements = decision_records(ws)
    assert len(statements) == 1
    why = ws.stella("why", "shop-1.4.0--staging", "-o", "json")
    assert why.code == 1
    reasons = {g["gate"]: (g["status"], g["reason"]) for g in why.json()["gates"]}
    assert reasons["environment-order"] == ("pass", "soaked")
    assert reasons["approvals"][0] == "pending"
