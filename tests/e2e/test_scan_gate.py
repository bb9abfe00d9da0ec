"""The vulnerability gate end to end: a critical finding in a Trivy report denies where the limit is 0."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import yaml
from stella_scan import vulnerability

from reconciler.models import Environment, Promotion, ReleaseLock
from reconciler.protocols import Actor, GateContext
from tests.support.oci import DirFiles
from tests.support.pipeline import example_workspace, promotion
from tests.support.repos import commit_all

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"
ALPINE_SHA256 = "cad7a3950b281daededa6dc18cc4e88cc0ba974b61ed072dbb0f104b8f1bd443"  # trivy/alpine-39.json
CLEAN_SHA256 = "9a8a24080c9b4f3eea3c137d59b72ddc35ed8a6da896f96c1b221426898c27a4"  # sl-micro-rancher5.4

PROD2 = """\
apiVersion: stella/v1
kind: Environment
name: prod2
gates:
  - {plugin: vulnerability, maxCritical: 0}
template: templates/shop.compose.yml.j2
variables: {LOG_LEVEL: info}
secrets: {DB_PASSWORD: env:DB_PASSWORD}
targets:
  - {name: prod2-1, agent: docker, endpoint: unix:///var/run/docker.sock, project: shop}
"""
DEV_GATES = "gates:\n  - {plugin: vulnerability, maxCritical: 5}\n"


def tagged(root: Path, repository: str, tag: str) -> str:
    """The digest `tag` names in the example's OCI layout mirror."""
    index = json.loads((root / "mirror" / "oci" / repository / "index.json").read_bytes())
    (digest,) = [
        m["digest"]
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    return str(digest)


def trivy_total(report: str) -> dict[str, int]:
    """What Trivy's table prints per severity for `report` (a testdata file): one per entry of
    `Results[].Vulnerabilities`, from the report's own data."""
    document = json.loads((TESTDATA / report).read_bytes())
    entries = [v for r in document.get("Results") or [] for v in r.get("Vulnerabilities") or []]
    found = Counter(entry["Severity"] for entry in entries)
    return {severity: found[severity] for severity in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")}


def place_report(root: Path, digest: str, report: str) -> str:
    """Make `report` (a testdata file) the only scan report of `digest`; its path in the repository."""
    directory = root / "mirror" / "reports" / digest.replace(":", "-")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    shutil.copyfile(TESTDATA / report, directory / Path(report).name)
    return f"mirror/reports/{digest.replace(':', '-')}/{Path(report).name}"


def test_critical_finding_denied_in_prod2_allowed_in_dev(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    web = tagged(ws.root, "registry.example.com/shop/web", "1.4.0")
    worker = tagged(ws.root, "registry.example.com/shop/worker", "1.4.0")
    web_report = place_report(ws.root, web, "trivy/alpine-39.json")
    worker_report = place_report(ws.root, worker, "trivy/sl-micro-rancher5.4.json")
    dev = ws.root / "environments" / "dev.yaml"
    dev.write_text(dev.read_text() + DEV_GATES)
    (ws.root / "environments" / "prod2.yaml").write_text(PROD2)
    (ws.root / "promotions" / "shop-1.4.0--prod2.yaml").write_text(promotion("shop-1.4.0", "prod2"))
    commit_all(ws.root, "scan reports, a vulnerability gate in dev, and prod2")

    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.err
    out = run.json()
    (lock,) = out["locked"]
    assert {name: c["digest"] for name, c in lock["components"].items()} == {"web": web, "worker": worker}
    decisions = {d["promotion"]: d for d in out["decisions"]}
    assert {p: d["decision"] for p, d in decisions.items()} == {
        "shop-1.4.0--dev": "allow",
        "shop-1.4.0--prod2": "deny",
    }

    reports = {
        "web": [{"path": web_report, "sha256": ALPINE_SHA256, "format": "trivy"}],
        "worker": [{"path": worker_report, "sha256": CLEAN_SHA256, "format": "trivy"}],
    }
    # findings as Trivy counts them (CVE-2019-14697 in musl and musl-utils is 2), and distinct ids
    counts = {
        "web": {"CRITICAL": 2, "HIGH": 0, "MEDIUM": 4, "LOW": 0, "UNKNOWN": 0},
        "worker": {"CRITICAL": 0, "HIGH": 0, "MEDIUM": 0, "LOW": 0, "UNKNOWN": 0},
    }
    assert counts == {
        "web": trivy_total("trivy/alpine-39.json"),
        "worker": trivy_total("trivy/sl-micro-rancher5.4.json"),
    }
    distinct = {
        "web": {"CRITICAL": 1, "HIGH": 0, "MEDIUM": 2, "LOW": 0, "UNKNOWN": 0},
        "worker": {"CRITICAL": 0, "HIGH": 0, "MEDIUM": 0, "LOW": 0, "UNKNOWN": 0},
    }
    facts = {"reports": reports, "counts": counts, "distinctIds": distinct, "excepted": []}
    expected = {
        "shop-1.4.0--prod2": {
            "gate": "vulnerability",
            "status": "fail",
            "reason": "too-many-critical",
            "message": "web: 2 CRITICAL (1 distinct id) > maxCritical 0 (CVE-2019-14697)",
            "facts": facts,
        },
        "shop-1.4.0--dev": {
            "gate": "vulnerability",
            "status": "pass",
            "reason": "within-thresholds",
            "message": "within thresholds (maxCritical 5): "
            "web: 2 CRITICAL (1 distinct id), 4 MEDIUM (2 distinct ids); worker: no findings",
            "facts": facts,
        },
    }
    for promotion_id, gate in expected.items():
        decision = decisions[promotion_id]
        evidence_hex = decision["evidence"].removeprefix("sha256:")
        predicate = json.loads(ws.show(f"evidence/{evidence_hex}.json"))["predicate"]
        (recorded,) = [g for g in predicate["decision"]["gates"] if g["gate"] == "vulnerability"]
        assert recorded == gate, promotion_id
        assert f"vulnerability/{gate['reason']}" in predicate["decision"]["reasons"]
        (shown,) = [g for g in decision["gates"] if g["gate"] == "vulnerability"]
        assert (shown["status"], shown["reason"]) == (gate["status"], gate["reason"])
    prod2 = json.loads(
        ws.show(f"evidence/{decisions['shop-1.4.0--prod2']['evidence'].removeprefix('sha256:')}.json")
    )
    blocking = [g["gate"] for g in prod2["predicate"]["decision"]["gates"] if g["status"] != "pass"]
    assert blocking == ["vulnerability"]  # the other gates let it through: the report alone denies
    assert ws.stella("audit", "verify").code == 0
    replayed = ws.stella("replay", "--all", "-o", "json")
    assert replayed.code == 0, replayed.out
    # the deny, the allow and the genesis ratification of the policy
    assert [r["identical"] for r in replayed.json()["records"]] == [True, True, True]


def test_example_prod_gate_has_data_for_every_example_image() -> None:
    """example-repo/ has reports for every image in its mirror; prod passes 1.4.0 and denies 1.3.0."""
    example = Path(__file__).resolve().parents[2] / "example-repo"
    shop = "registry.example.com/shop"
    digests = {
        (component, tag): tagged(example, f"{shop}/{component}", tag)
        for component in ("web", "worker")
        for tag in ("1.3.0", "1.4.0")
    }
    reports = example / "mirror" / "reports"
    assert {p.name for p in reports.iterdir() if p.is_dir()} == {
        d.replace(":", "-") for d in digests.values()
    }
    prod = Environment.model_validate(yaml.safe_load((example / "environments" / "prod.yaml").read_text()))
    (gate,) = [g for g in prod.gates if g.plugin == "vulnerability"]
    results = {}
    for tag in ("1.3.0", "1.4.0"):
        lock = ReleaseLock.model_validate(
            {
                "name": f"shop-{tag}",
                "id": "sha256:" + "0" * 64,
                "components": {
                    c: {"image": f"{shop}/{c}", "tag": tag, "digest": digests[(c, tag)]}
                    for c in ("web", "worker")
                },
            }
        )
        ctx = GateContext(
            now=datetime(2026, 12, 1, tzinfo=UTC),
            promotion_id=f"shop-{tag}--prod",
            promotion=Promotion.model_validate(
                {
                    "apiVersion": "stella/v1",
                    "kind": "Promotion",
                    "release": f"shop-{tag}",
                    "environment": "prod",
                }
            ),
            release=lock,
            environment=prod,
            options=gate.options,
            requester=Actor(None),
            files=DirFiles(example),
        )
        result = vulnerability.evaluate(ctx)
        results[tag] = (result.status, result.reason, result.message)
    assert results == {
        "1.3.0": (
            "fail",
            "too-many-critical",
            "web: 2 CRITICAL (1 distinct id) > maxCritical 0 (CVE-2019-14697); "
            "worker: 1 CRITICAL (1 distinct id) > maxCritical 0 (CVE-2019-18224)",
        ),
        "1.4.0": (
            "pass",
            "within-thresholds",
            "within thresholds (maxCritical 0, maxHigh 3): web: no findings; worker: no findings",
        ),
    }
