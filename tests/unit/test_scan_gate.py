"""The vulnerability gate over real scan reports in a mirror: thresholds, blocklist, exceptions."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from stella_scan.gate import VulnerabilityGate, reports_dir, vulnerability
from stella_scan.reports import SEVERITIES, Severity

from reconciler.evidence import sha256_hex
from reconciler.models import Environment, Promotion, ReleaseLock
from reconciler.protocols import Actor, Gate, GateContext, GateResult, GateStatus
from tests.support.oci import DirFiles

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
DIGESTS = {"web": "sha256:" + "a" * 64, "worker": "sha256:" + "b" * 64}
DIRS = {name: f"mirror/reports/sha256-{digest.removeprefix('sha256:')}" for name, digest in DIGESTS.items()}

# sha256 of each testdata file, as its README lists them
SHA256 = {
    "trivy/alpine-39-skip.json": "f801f381fb4a2e1efa2ffbb7188e6005a4c0711a4453189fc036011788b64ace",
    "trivy/alpine-39.json": "cad7a3950b281daededa6dc18cc4e88cc0ba974b61ed072dbb0f104b8f1bd443",
    "trivy/debian-buster.json": "efc1ae7dcec81dbfd19ddb7fc2cc2c43e2ea81fac4438f382615cb6961e46db4",
    "trivy/fluentd-gems.json": "db5f9e1938f27b437f90c38db32db3a4322e40add3c7c01ba5fc9a78301a305a",
    "trivy/sl-micro-rancher5.4.json": "9a8a24080c9b4f3eea3c137d59b72ddc35ed8a6da896f96c1b221426898c27a4",
    "osv/GHSA-838r-hvwh-24h8.json": "045275ae09777fc80299f0dcfcc5d7a12bc74f29466ce3f567c8903de8e605a7",
    "osv/GO-2024-2963.json": "099f3bcc821ec9fa52dbc64414cccf3816edc363428cbf1a4d0140ef1cd7afa0",
    "osv/UBUNTU-CVE-2025-38094.json": "de77979b052e1109ef325bbed78479d383dfdee0b92f89b236203f7f6d01e5ee",
    "osv/osv-scanner-multiple-packages-with-vulns.json": (
        "c5af98ca9400dc762bc9725e1c4915ef834bd88f8c7f275ace6ec609a07de8e2"
    ),
    "osv/osv-scanner-results-empty.json": "6be991011f3f1ce2b0a75474ef50dff8edd210ed03181e6afdb4c5eefc38c3bb",
}

ALPINE = "trivy/alpine-39.json"
CLEAN = "trivy/sl-micro-rancher5.4.json"
OSV_SCAN = "osv/osv-scanner-multiple-packages-with-vulns.json"

# a Trivy report made here: seven LOW findings (more ids than a message lists)
SEVEN_LOW = json.dumps(
    {
        "SchemaVersion": 2,
        "Results": [
            {
                "Target": "made in memory",
                "Vulnerabilities": [
                    {"VulnerabilityID": f"CVE-2000-000{n}", "PkgName": "p", "Severity": "LOW"}
                    for n in range(1, 8)
                ],
            }
        ],
    }
).encode()

# osv-scanner output made here for the same image: it lists OS packages under their source package, once
# per binary package (os_package_name), and its summary counts the source package once: one finding
MUSL_OSV_SCANNER = json.dumps(
    {
        "results": [
            {
                "source": {"path": "/lib/apk/db/installed", "type": "os"},
                "packages": [
                    {
                        "package": {
                            "name": "musl",
                            "os_package_name": binary,
                            "version": "1.1.20-r4",
                            "ecosystem": "Alpine:v3.9",
                        },
                        "vulnerabilities": [
                            {
                                "id": "CVE-2019-14697",
                                "modified": "2019-08-06T16:15:00Z",
                                "database_specific": {"severity": "CRITICAL"},
                            }
                        ],
                    }
                    for binary in ("musl", "musl-utils")
                ],
            }
        ]
    }
).encode()


def fmt(name: str) -> str:
    if name.startswith("trivy/"):
        return "trivy"
    return "osv-scanner" if "osv-scanner" in name else "osv"


def used(component: str, name: str) -> dict[str, object]:
    """The facts entry of testdata report `name` placed for `component`."""
    return {"path": f"{DIRS[component]}/{Path(name).name}", "sha256": SHA256[name], "format": fmt(name)}


def counts(**given: int) -> dict[Severity, int]:
    return {severity: given.get(severity, 0) for severity in SEVERITIES}


def facts(
    reports: Mapping[str, list[dict[str, object]]],
    found: Mapping[str, dict[Severity, int]],
    distinct: Mapping[str, dict[Severity, int]] | None = None,
    excepted: list[dict[str, object]] | None = None,
    **more: object,
) -> dict[str, object]:
    """The gate's facts: `found` the findings per severity, `distinct` the distinct ids (default: the same)."""
    return {
        "reports": dict(reports),
        "counts": dict(found),
        "distinctIds": dict(found if distinct is None else distinct),
        "excepted": excepted or [],
        **more,
    }


def trivy_total(name: str) -> dict[Severity, int]:
    """What Trivy's table prints for a report (`Total: 6 (... MEDIUM: 4, HIGH: 0, CRITICAL: 2)`): one per
    entry of `Results[].Vulnerabilities`, by its `Severity`. Read from the report's own data."""
    document = json.loads((TESTDATA / name).read_bytes())
    entries = [v for r in document.get("Results") or [] for v in r.get("Vulnerabilities") or []]
    return counts(**Counter(entry["Severity"] for entry in entries))


def result(status: GateStatus, reason: str, message: str, **kw: Any) -> GateResult:
    return GateResult("vulnerability", status, reason, message, **kw)


@dataclass(frozen=True)
class Row:
    options: dict[str, Any]
    reports: dict[str, list[str]]
    """Component -> testdata files placed in its digest's report directory."""
    expected: GateResult
    components: tuple[str, ...] = ("web",)
    made: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """Component -> files made in the test (name -> bytes)."""


def mirror(root: Path, row: Row) -> DirFiles:
    """A repository directory holding the row's reports under mirror/reports/sha256-<hex>/."""
    for component, names in row.reports.items():
        directory = root / DIRS[component]
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(TESTDATA / name, directory / Path(name).name)
    for component, made in row.made.items():
        directory = root / DIRS[component]
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in made.items():
            (directory / name).write_bytes(data)
    return DirFiles(root)


def context(files: Any, options: Mapping[str, Any], components: tuple[str, ...], **kw: Any) -> GateContext:
    env = Environment.model_validate({"apiVersion": "stella/v1", "kind": "Environment", "name": "prod"})
    return GateContext(
        now=NOW,
        promotion_id="shop-1.4.0--prod",
        promotion=Promotion.model_validate(
            {"apiVersion": "stella/v1", "kind": "Promotion", "release": "shop-1.4.0", "environment": "prod"}
        ),
        release=ReleaseLock.model_validate(
            {
                "name": "shop-1.4.0",
                "id": "sha256:" + "1" * 64,
                "components": {
                    c: {"image": f"registry.example.com/shop/{c}", "tag": "1.4.0", "digest": DIGESTS[c]}
                    for c in components
                },
            }
        ),
        environment=env,
        options=options,
        requester=Actor(identity="dev@example.com", verified=True),
        files=files,
        **kw,
    )


NO_SEVERITY_LIMITS = "within thresholds (no limits set)"
KNOWN = "blocklist, exceptions, maxCritical, maxHigh, maxLow, maxMedium, maxUnknown"
UNTIL = "must be an RFC 3339 time with a time zone or a date"
MUSL = {"id": "CVE-2019-14697", "until": "2026-12-31", "reason": "musl is not reachable"}
# CVE-2019-14697 in musl and musl-utils, CVE-2019-1549 and CVE-2019-1551 in libcrypto1.1 and libssl1.1
ALPINE_COUNTS = counts(CRITICAL=2, MEDIUM=4)
ALPINE_DISTINCT = counts(CRITICAL=1, MEDIUM=2)
ALPINE_FACTS = facts({"web": [used("web", ALPINE)]}, {"web": ALPINE_COUNTS}, {"web": ALPINE_DISTINCT})
WEB_MISSING = f"no scan report for web ({DIGESTS['web']}): no {DIRS['web']}/*.json"
WORKER_MISSING = f"no scan report for worker ({DIGESTS['worker']}): no {DIRS['worker']}/*.json"
UNRECOGNISED = (
    "unrecognised report: neither Trivy JSON (an object with SchemaVersion 2) nor OSV (one record with id "
    "and modified, or osv-scanner output with results)"
)


def excepted(
    finding: str, severity: str, findings: int, exception: Mapping[str, object]
) -> dict[str, object]:
    return {"component": "web", "finding": finding, "severity": severity, "findings": findings, **exception}


ROWS: dict[str, Row] = {
    # --- thresholds ---
    "clean-no-limits": Row(
        {},
        {"web": [CLEAN]},
        result(
            "pass",
            "within-thresholds",
            f"{NO_SEVERITY_LIMITS}: web: no findings",
            facts=facts({"web": [used("web", CLEAN)]}, {"web": counts()}),
        ),
    ),
    "critical-over-limit": Row(
        {"maxCritical": 0},
        {"web": [ALPINE]},
        result(
            "fail",
            "too-many-critical",
            "web: 2 CRITICAL (1 distinct id) > maxCritical 0 (CVE-2019-14697)",
            facts=ALPINE_FACTS,
        ),
    ),
    # the limit counts findings, as Trivy does: one CVE in two packages is 2, over a limit of 1
    "limits-count-findings-not-ids": Row(
        {"maxCritical": 1},
        {"web": [ALPINE]},
        result(
            "fail",
            "too-many-critical",
            "web: 2 CRITICAL (1 distinct id) > maxCritical 1 (CVE-2019-14697)",
            facts=ALPINE_FACTS,
        ),
    ),
    "at-the-limits": Row(
        {"maxCritical": 2, "maxMedium": 4, "maxHigh": 0},
        {"web": [ALPINE]},
        result(
            "pass",
            "within-thresholds",
            "within thresholds (maxCritical 2, maxHigh 0, maxMedium 4): "
            "web: 2 CRITICAL (1 distinct id), 4 MEDIUM (2 distinct ids)",
            facts=ALPINE_FACTS,
        ),
    ),
    "every-violation-listed-worst-is-the-reason": Row(
        {"maxMedium": 1, "maxCritical": 0},
        {"web": [ALPINE]},
        result(
            "fail",
            "too-many-critical",
            "web: 2 CRITICAL (1 distinct id) > maxCritical 0 (CVE-2019-14697); "
            "web: 4 MEDIUM (2 distinct ids) > maxMedium 1 (CVE-2019-1549, CVE-2019-1551)",
            facts=ALPINE_FACTS,
        ),
    ),
    "too-many-medium": Row(
        {"maxCritical": 5, "maxMedium": 3},
        {"web": [ALPINE]},
        result(
            "fail",
            "too-many-medium",
            "web: 4 MEDIUM (2 distinct ids) > maxMedium 3 (CVE-2019-1549, CVE-2019-1551)",
            facts=ALPINE_FACTS,
        ),
    ),
    "too-many-high": Row(
        {"maxCritical": 1, "maxHigh": 0},
        {"web": ["trivy/fluentd-gems.json"]},
        result(
            "fail",
            "too-many-high",
            "web: 1 HIGH (1 distinct id) > maxHigh 0 (CVE-2020-8165)",
            facts=facts(
                {"web": [used("web", "trivy/fluentd-gems.json")]}, {"web": counts(CRITICAL=1, HIGH=1)}
            ),
        ),
    ),
    "too-many-low": Row(
        {"maxLow": 0},
        {"web": ["trivy/debian-buster.json"]},
        result(
            "fail",
            "too-many-low",
            "web: 1 LOW (1 distinct id) > maxLow 0 (CVE-2019-18276)",
            facts=facts(
                {"web": [used("web", "trivy/debian-buster.json")]}, {"web": counts(CRITICAL=1, LOW=1)}
            ),
        ),
    ),
    "too-many-unknown": Row(
        {"maxUnknown": 0, "maxCritical": 0},
        {"web": ["osv/GO-2024-2963.json"]},
        result(
            "fail",
            "too-many-unknown",
            "web: 1 UNKNOWN (1 distinct id) > maxUnknown 0 (GO-2024-2963)",
            facts=facts({"web": [used("web", "osv/GO-2024-2963.json")]}, {"web": counts(UNKNOWN=1)}),
        ),
    ),
    "ids-capped": Row(
        {"maxLow": 6},
        {},
        result(
            "fail",
            "too-many-low",
            "web: 7 LOW (7 distinct ids) > maxLow 6 (CVE-2000-0001, CVE-2000-0002, CVE-2000-0003, CVE-2000-0004, "
            "CVE-2000-0005 and 2 more)",
            facts=facts(
                {
                    "web": [
                        {
                            "path": f"{DIRS['web']}/seven.json",
                            "sha256": sha256_hex(SEVEN_LOW),
                            "format": "trivy",
                        }
                    ]
                },
                {"web": counts(LOW=7)},
            ),
        ),
        made={"web": {"seven.json": SEVEN_LOW}},
    ),
    # --- several reports, several components ---
    "multiple-reports-one-digest-deduplicated": Row(
        {"maxCritical": 2},
        {"web": ["trivy/fluentd-gems.json", "trivy/debian-buster.json", "osv/GHSA-838r-hvwh-24h8.json"]},
        result(
            "pass",
            "within-thresholds",
            # CVE-2019-18224 in libidn2-0 is in both Trivy reports: one finding, counted once
            "within thresholds (maxCritical 2): "
            "web: 2 CRITICAL (2 distinct ids), 1 HIGH (1 distinct id), 1 LOW (1 distinct id)",
            facts=facts(
                {
                    "web": [
                        used("web", "osv/GHSA-838r-hvwh-24h8.json"),
                        used("web", "trivy/debian-buster.json"),
                        used("web", "trivy/fluentd-gems.json"),
                    ]
                },
                {"web": counts(CRITICAL=2, HIGH=1, LOW=1)},
            ),
        ),
    ),
    "the-same-scan-twice-counts-once": Row(
        {"maxCritical": 2},
        {"web": [ALPINE]},
        result(
            "pass",
            "within-thresholds",
            "within thresholds (maxCritical 2): web: 2 CRITICAL (1 distinct id), 4 MEDIUM (2 distinct ids)",
            facts=facts(
                {
                    "web": [
                        {"path": f"{DIRS['web']}/again.json", "sha256": SHA256[ALPINE], "format": "trivy"},
                        used("web", ALPINE),
                    ]
                },
                {"web": ALPINE_COUNTS},
                {"web": ALPINE_DISTINCT},
            ),
        ),
        made={"web": {"again.json": (TESTDATA / ALPINE).read_bytes()}},
    ),
    # osv-scanner finds CVE-2019-14697 in the source package musl only; Trivy also in musl-utils: 2
    "two-scanners-the-most-findings-count": Row(
        {"maxCritical": 1},
        {"web": [ALPINE]},
        result(
            "fail",
            "too-many-critical",
            "web: 2 CRITICAL (1 distinct id) > maxCritical 1 (CVE-2019-14697)",
            facts=facts(
                {
                    "web": [
                        used("web", ALPINE),
                        {
                            "path": f"{DIRS['web']}/osv-scanner.json",
                            "sha256": sha256_hex(MUSL_OSV_SCANNER),
                            "format": "osv-scanner",
                        },
                    ]
                },
                {"web": ALPINE_COUNTS},
                {"web": ALPINE_DISTINCT},
            ),
        ),
        made={"web": {"osv-scanner.json": MUSL_OSV_SCANNER}},
    ),
    "clean-scans-and-a-readme": Row(
        {"maxCritical": 0},
        {"web": ["osv/osv-scanner-results-empty.json", "trivy/alpine-39-skip.json"]},
        result(
            "pass",
            "within-thresholds",
            "within thresholds (maxCritical 0): web: no findings",
            facts=facts(
                {
                    "web": [
                        used("web", "trivy/alpine-39-skip.json"),
                        used("web", "osv/osv-scanner-results-empty.json"),
                    ]
                },
                {"web": counts()},
            ),
        ),
        made={"web": {"README.md": b"not a report\n"}},
    ),
    "two-components": Row(
        {"maxCritical": 5},
        {"web": [ALPINE], "worker": [CLEAN]},
        result(
            "pass",
            "within-thresholds",
            "within thresholds (maxCritical 5): "
            "web: 2 CRITICAL (1 distinct id), 4 MEDIUM (2 distinct ids); worker: no findings",
            facts=facts(
                {"web": [used("web", ALPINE)], "worker": [used("worker", CLEAN)]},
                {"web": ALPINE_COUNTS, "worker": counts()},
                {"web": ALPINE_DISTINCT, "worker": counts()},
            ),
        ),
        components=("worker", "web"),
    ),
    "two-components-both-over": Row(
        {"maxCritical": 0, "maxHigh": 0},
        {"web": ["osv/GHSA-838r-hvwh-24h8.json"], "worker": [OSV_SCAN]},
        result(
            "fail",
            "too-many-critical",
            "web: 1 CRITICAL (1 distinct id) > maxCritical 0 (GHSA-838r-hvwh-24h8); "
            "worker: 1 CRITICAL (1 distinct id) > maxCritical 0 (GHSA-43w2-9j62-hq99); "
            "worker: 1 HIGH (1 distinct id) > maxHigh 0 (GHSA-qc84-gqf4-9926)",
            facts=facts(
                {"web": [used("web", "osv/GHSA-838r-hvwh-24h8.json")], "worker": [used("worker", OSV_SCAN)]},
                {"web": counts(CRITICAL=1), "worker": counts(CRITICAL=1, HIGH=1, MEDIUM=1)},
            ),
        ),
        components=("web", "worker"),
    ),
    # --- blocklist ---
    "blocklisted": Row(
        {"blocklist": ["CVE-2099-0001", "CVE-2019-14697"]},
        {"web": [ALPINE]},
        result(
            "fail",
            "blocklisted",
            "web: blocklisted CVE-2019-14697",
            facts={
                **ALPINE_FACTS,
                "blocklisted": [{"component": "web", "id": "CVE-2019-14697", "listed": ["CVE-2019-14697"]}],
            },
        ),
    ),
    "blocklisted-by-alias": Row(
        {"blocklist": ["RUSTSEC-2023-0045", "CVE-2022-23639"]},
        {"web": [OSV_SCAN]},
        result(
            "fail",
            "blocklisted",
            "web: blocklisted GHSA-qc84-gqf4-9926 (listed as CVE-2022-23639), "
            "GHSA-wfg4-322g-9vqv (listed as RUSTSEC-2023-0045)",
            facts=facts(
                {"web": [used("web", OSV_SCAN)]},
                {"web": counts(CRITICAL=1, HIGH=1, MEDIUM=1)},
                blocklisted=[
                    {"component": "web", "id": "GHSA-qc84-gqf4-9926", "listed": ["CVE-2022-23639"]},
                    {"component": "web", "id": "GHSA-wfg4-322g-9vqv", "listed": ["RUSTSEC-2023-0045"]},
                ],
            ),
        ),
    ),
    "blocklisted-by-osv-upstream": Row(
        {"blocklist": ["CVE-2025-38094"]},
        {"web": ["osv/UBUNTU-CVE-2025-38094.json"]},
        result(
            "fail",
            "blocklisted",
            "web: blocklisted UBUNTU-CVE-2025-38094 (listed as CVE-2025-38094)",
            facts=facts(
                {"web": [used("web", "osv/UBUNTU-CVE-2025-38094.json")]},
                {"web": counts(MEDIUM=1)},
                blocklisted=[
                    {"component": "web", "id": "UBUNTU-CVE-2025-38094", "listed": ["CVE-2025-38094"]}
                ],
            ),
        ),
    ),
    "blocklisted-by-trivy-vendor-advisory": Row(
        {"blocklist": ["DSA-4613-1"], "maxCritical": 1},
        {"web": ["trivy/debian-buster.json"]},
        result(
            "fail",
            "blocklisted",
            "web: blocklisted CVE-2019-18224 (listed as DSA-4613-1)",
            facts=facts(
                {"web": [used("web", "trivy/debian-buster.json")]},
                {"web": counts(CRITICAL=1, LOW=1)},
                blocklisted=[{"component": "web", "id": "CVE-2019-18224", "listed": ["DSA-4613-1"]}],
            ),
        ),
    ),
    "blocklisted-before-thresholds": Row(
        {"maxMedium": 0, "blocklist": ["CVE-2019-14697"]},
        {"web": [ALPINE]},
        result(
            "fail",
            "blocklisted",
            "web: blocklisted CVE-2019-14697; "
            "web: 4 MEDIUM (2 distinct ids) > maxMedium 0 (CVE-2019-1549, CVE-2019-1551)",
            facts={
                **ALPINE_FACTS,
                "blocklisted": [{"component": "web", "id": "CVE-2019-14697", "listed": ["CVE-2019-14697"]}],
            },
        ),
    ),
    # --- exceptions ---
    "live-exception-neither-counted-nor-blocklisted": Row(
        {"maxCritical": 0, "blocklist": ["CVE-2019-14697"], "exceptions": [MUSL]},
        {"web": [ALPINE]},
        result(
            "pass",
            "within-thresholds",
            "within thresholds (maxCritical 0): web: 4 MEDIUM (2 distinct ids); "
            "excepted: CVE-2019-14697 in web (until 2026-12-31: musl is not reachable)",
            facts=facts(
                {"web": [used("web", ALPINE)]},
                {"web": counts(MEDIUM=4)},
                {"web": counts(MEDIUM=2)},
                [excepted("CVE-2019-14697", "CRITICAL", 2, MUSL)],
            ),
        ),
    ),
    "exception-by-alias-until-now-inclusive": Row(
        {
            "maxCritical": 0,
            "exceptions": [
                {"id": "RUSTSEC-2021-0003", "until": "2026-12-01T11:00:00+01:00", "reason": "no input"}
            ],
        },
        {"web": [OSV_SCAN]},
        result(
            "pass",
            "within-thresholds",
            "within thresholds (maxCritical 0): web: 1 HIGH (1 distinct id), 1 MEDIUM (1 distinct id); "
            "excepted: GHSA-43w2-9j62-hq99 in web (until 2026-12-01T10:00:00Z: no input)",
            facts=facts(
                {"web": [used("web", OSV_SCAN)]},
                {"web": counts(HIGH=1, MEDIUM=1)},
                excepted=[
                    excepted(
                        "GHSA-43w2-9j62-hq99",
                        "CRITICAL",
                        1,
                        {"id": "RUSTSEC-2021-0003", "until": "2026-12-01T10:00:00Z", "reason": "no input"},
                    )
                ],
            ),
        ),
    ),
    "exception-until-today-as-a-yaml-date": Row(
        {"maxCritical": 0, "exceptions": [{**MUSL, "until": date(2026, 12, 1)}]},
        {"web": [ALPINE]},
        result(
            "pass",
            "within-thresholds",
            "within thresholds (maxCritical 0): web: 4 MEDIUM (2 distinct ids); "
            "excepted: CVE-2019-14697 in web (until 2026-12-01: musl is not reachable)",
            facts=facts(
                {"web": [used("web", ALPINE)]},
                {"web": counts(MEDIUM=4)},
                {"web": counts(MEDIUM=2)},
                [excepted("CVE-2019-14697", "CRITICAL", 2, {**MUSL, "until": "2026-12-01"})],
            ),
        ),
    ),
    "expired-exception-date": Row(
        {"maxCritical": 0, "exceptions": [{**MUSL, "until": "2026-11-30"}]},
        {"web": [ALPINE]},
        result(
            "fail",
            "too-many-critical",
            "web: 2 CRITICAL (1 distinct id) > maxCritical 0 (CVE-2019-14697); exception no longer applies: "
            "CVE-2019-14697 for CVE-2019-14697 in web (until 2026-11-30)",
            facts={
                **ALPINE_FACTS,
                "expired": [{"component": "web", "finding": "CVE-2019-14697", **MUSL, "until": "2026-11-30"}],
            },
        ),
    ),
    "expired-exception-a-second-ago-blocklisted": Row(
        {
            "blocklist": ["CVE-2019-14697"],
            "exceptions": [{**MUSL, "until": datetime(2026, 12, 1, 9, 59, 59, tzinfo=UTC)}],
        },
        {"web": [ALPINE]},
        result(
            "fail",
            "blocklisted",
            "web: blocklisted CVE-2019-14697; exception no longer applies: "
            "CVE-2019-14697 for CVE-2019-14697 in web (until 2026-12-01T09:59:59Z)",
            facts={
                **ALPINE_FACTS,
                "blocklisted": [{"component": "web", "id": "CVE-2019-14697", "listed": ["CVE-2019-14697"]}],
                "expired": [
                    {"component": "web", "finding": "CVE-2019-14697", **MUSL, "until": "2026-12-01T09:59:59Z"}
                ],
            },
        ),
    ),
    # --- fail closed ---
    "missing-report": Row(
        {"maxCritical": 0},
        {},
        result(
            "pending", "no-scan-report", WEB_MISSING, facts=facts({}, {}, missing={"web": DIGESTS["web"]})
        ),
    ),
    "only-a-readme-is-no-report": Row(
        {},
        {},
        result(
            "pending", "no-scan-report", WEB_MISSING, facts=facts({}, {}, missing={"web": DIGESTS["web"]})
        ),
        made={"web": {"README.md": b"reports come later\n"}},
    ),
    "missing-for-one-of-two": Row(
        {"maxCritical": 0},
        {"web": [CLEAN]},
        result(
            "pending",
            "no-scan-report",
            WORKER_MISSING,
            facts=facts(
                {"web": [used("web", CLEAN)]}, {"web": counts()}, missing={"worker": DIGESTS["worker"]}
            ),
        ),
        components=("web", "worker"),
    ),
    "a-violation-is-final-despite-a-missing-report": Row(
        {"maxCritical": 0},
        {"web": [ALPINE]},
        result(
            "fail",
            "too-many-critical",
            f"web: 2 CRITICAL (1 distinct id) > maxCritical 0 (CVE-2019-14697); {WORKER_MISSING}",
            facts={**ALPINE_FACTS, "missing": {"worker": DIGESTS["worker"]}},
        ),
        components=("web", "worker"),
    ),
    "unrecognised-report": Row(
        {"maxCritical": 0},
        {"web": ["oci/ociv1.manifest.json"]},
        result(
            "error",
            "invalid-report",
            f"{DIRS['web']}/ociv1.manifest.json: {UNRECOGNISED}",
            facts=facts({}, {}, invalid=[f"{DIRS['web']}/ociv1.manifest.json: {UNRECOGNISED}"]),
        ),
    ),
    "one-invalid-among-valid-reports": Row(
        {"maxCritical": 5},
        {"web": [ALPINE]},
        result(
            "error",
            "invalid-report",
            f"{DIRS['web']}/broken.json:1: the report is not valid JSON: Expecting value",
            facts={
                **ALPINE_FACTS,
                "invalid": [f"{DIRS['web']}/broken.json:1: the report is not valid JSON: Expecting value"],
            },
        ),
        made={"web": {"broken.json": b'{"SchemaVersion": 2, "Results": ['}},
    ),
    # --- options ---
    "unknown-option": Row(
        {"maxCritical": 0, "maxCritcal": 1, "severity": "HIGH"},
        {"web": [ALPINE]},
        result(
            "error",
            "unknown-option",
            f"unknown option(s) maxCritcal, severity of the vulnerability gate (known: {KNOWN})",
            facts={"unknown": ["maxCritcal", "severity"]},
        ),
    ),
    "invalid-options": Row(
        {
            "maxCritical": -1,
            "maxHigh": True,
            "maxLow": "3",
            "maxUnknown": 0,
            "blocklist": "CVE-2019-14697",
            "exceptions": [
                {"id": "CVE-1", "until": "tomorrow", "reason": "r"},
                {"id": "CVE-2", "until": "2026-12-31T00:00:00", "reason": "r"},
                {"id": "CVE-3", "until": "2026-12-31"},
                "CVE-4",
                {"id": "CVE-5", "until": "2026-12-31", "reason": "r", "ticket": 7},
                {"id": "CVE-6", "until": datetime(2026, 12, 31), "reason": "r"},  # naive
                {"id": "CVE-7", "until": "2026-02-30", "reason": "r"},
                {"id": "", "until": "2026-12-31", "reason": "r"},
            ],
        },
        {"web": [ALPINE]},
        result(
            "error",
            "invalid-option",
            "maxCritical must be an integer >= 0, got -1; maxHigh must be an integer >= 0, got True; "
            "maxLow must be an integer >= 0, got '3'; blocklist must be a list of ids, got 'CVE-2019-14697'; "
            f"exceptions[0].until {UNTIL}, got 'tomorrow'; "
            f"exceptions[1].until {UNTIL}, got '2026-12-31T00:00:00'; "
            "exceptions[2].reason must say why CVE-3 is excepted, got None; "
            "exceptions[3] must be a mapping {id, until, reason}, got 'CVE-4'; "
            "exceptions[4] has unknown field(s) ticket (known: id, until, reason); "
            f"exceptions[5].until {UNTIL}, got datetime.datetime(2026, 12, 31, 0, 0); "
            f"exceptions[6].until {UNTIL}, got '2026-02-30'; "
            "exceptions[7].id must be a vulnerability id, got ''",
        ),
    ),
    "exceptions-not-a-list": Row(
        {"exceptions": MUSL},
        {"web": [ALPINE]},
        result(
            "error",
            "invalid-option",
            f"exceptions must be a list of {{id, until, reason}}, got {MUSL!r}",
        ),
    ),
}


@pytest.mark.parametrize("name", list(ROWS), ids=list(ROWS))
def test_vulnerability_gate(name: str, tmp_path: Path) -> None:
    row = ROWS[name]
    ctx = context(mirror(tmp_path, row), row.options, row.components)
    assert vulnerability.evaluate(ctx) == row.expected


TRIVY_REPORTS = sorted(name for name in SHA256 if name.startswith("trivy/"))


@pytest.mark.parametrize("name", TRIVY_REPORTS, ids=TRIVY_REPORTS)
def test_counts_are_what_trivy_prints(name: str, tmp_path: Path) -> None:
    """The findings the gate counts per severity are Trivy's own totals for the report; the distinct
    ids are its distinct VulnerabilityIDs per severity."""
    document = json.loads((TESTDATA / name).read_bytes())
    entries = [v for r in document.get("Results") or [] for v in r.get("Vulnerabilities") or []]
    distinct = counts(**Counter(s for _, s in {(e["VulnerabilityID"], e["Severity"]) for e in entries}))
    row = Row({}, {"web": [name]}, result("pass", "", ""))
    found = vulnerability.evaluate(context(mirror(tmp_path, row), {}, ("web",)))
    assert (found.status, found.facts["counts"], found.facts["distinctIds"]) == (
        "pass",
        {"web": trivy_total(name)},
        {"web": distinct},
    )


def test_alpine_counts_as_trivy_prints_them() -> None:
    """alpine-39.json: Trivy prints `Total: 6 (UNKNOWN: 0, LOW: 0, MEDIUM: 4, HIGH: 0, CRITICAL: 2)`."""
    assert trivy_total(ALPINE) == ALPINE_COUNTS == counts(CRITICAL=2, MEDIUM=4)


class ReversedFiles(DirFiles):
    """Lists directories backwards: a FileSource whose order must not matter."""

    def listdir(self, path: str) -> list[str]:
        return list(reversed(super().listdir(path)))


def test_result_does_not_depend_on_file_component_or_option_order(tmp_path: Path) -> None:
    row = Row(
        {
            "maxMedium": 1,
            "blocklist": ["CVE-2022-23639", "DSA-4613-1"],
            "maxCritical": 0,
            "exceptions": [MUSL, {"id": "GHSA-wfg4-322g-9vqv", "until": "2027-01-01", "reason": "r"}],
        },
        {"web": [ALPINE, "trivy/debian-buster.json", OSV_SCAN], "worker": ["trivy/fluentd-gems.json", CLEAN]},
        result("pass", "", ""),
        components=("web", "worker"),
    )
    files = mirror(tmp_path, row)
    forward = vulnerability.evaluate(context(files, row.options, ("web", "worker")))
    backward = vulnerability.evaluate(
        context(ReversedFiles(tmp_path), dict(reversed(row.options.items())), ("worker", "web"))
    )
    assert forward == backward
    assert (forward.status, forward.reason) == ("fail", "blocklisted")
    assert json.loads(json.dumps(forward.facts)) == forward.facts  # JSON-compatible as it is


def test_reports_live_under_the_configured_mirror(tmp_path: Path) -> None:
    (tmp_path / "offline" / "reports" / f"sha256-{'a' * 64}").mkdir(parents=True)
    shutil.copyfile(TESTDATA / ALPINE, tmp_path / "offline" / "reports" / f"sha256-{'a' * 64}" / "scan.json")
    ctx = context(DirFiles(tmp_path), {"maxCritical": 0}, ("web",), mirror="./offline/")
    assert vulnerability.evaluate(ctx) == result(
        "fail",
        "too-many-critical",
        "web: 2 CRITICAL (1 distinct id) > maxCritical 0 (CVE-2019-14697)",
        facts=facts(
            {
                "web": [
                    {
                        "path": f"offline/reports/sha256-{'a' * 64}/scan.json",
                        "sha256": SHA256[ALPINE],
                        "format": "trivy",
                    }
                ]
            },
            {"web": ALPINE_COUNTS},
            {"web": ALPINE_DISTINCT},
        ),
    )


@pytest.mark.parametrize(
    ("mirror_dir", "expected"),
    [
        ("mirror", "mirror/reports/sha256-ab"),
        ("./data/", "data/reports/sha256-ab"),
        ("", "reports/sha256-ab"),
    ],
    ids=["default", "dotted", "root"],
)
def test_reports_dir(mirror_dir: str, expected: str) -> None:
    assert reports_dir(mirror_dir, "sha256:ab") == expected


def test_no_files_is_an_error() -> None:
    ctx = context(None, {}, ("web",))
    assert vulnerability.evaluate(ctx) == result(
        "error", "no-files", "no repository files were handed to the gate"
    )


def test_entry_point_loads_the_gate() -> None:
    (entry,) = [e for e in entry_points(group="stella.gates") if e.name == "vulnerability"]
    gate = entry.load()
    assert gate is vulnerability
    assert isinstance(gate, Gate)
    assert isinstance(gate, VulnerabilityGate)
    manifest = gate.manifest
    assert (manifest.name, manifest.kinds, manifest.network) == ("vulnerability", ("gate",), False)


def test_options_from_replayed_inputs_decide_the_same(tmp_path: Path) -> None:
    """Options as YAML gives them (dates) and as the inputs file gives them back (strings) agree."""
    row = ROWS["exception-until-today-as-a-yaml-date"]
    files = mirror(tmp_path, row)
    from_yaml = vulnerability.evaluate(context(files, row.options, row.components))
    as_json = json.loads(json.dumps(row.options, default=str))
    assert as_json["exceptions"][0]["until"] == "2026-12-01"
    assert vulnerability.evaluate(context(files, as_json, row.components)) == from_yaml
    later = replace(context(files, as_json, row.components), now=datetime(2026, 12, 2, tzinfo=UTC))
    assert vulnerability.evaluate(later).status == "fail"
