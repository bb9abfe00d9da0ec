"""Scan reports: every Trivy and OSV file in the shared testdata, parsed, counted and deduplicated."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import stella_scan
from stella_scan.reports import (
    SEVERITIES,
    Finding,
    Report,
    ReportError,
    Severity,
    Vulnerability,
    count_by_severity,
    deduplicate,
    parse_report,
    vulnerabilities,
)

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"


def counts(**given: int) -> dict[Severity, int]:
    """All five severities, zero unless given (`CRITICAL=2`)."""
    return {severity: given.get(severity, 0) for severity in SEVERITIES}


# file -> (format, findings as the scanner counts them, distinct vulnerabilities (ids and aliases merged))
EXPECTED: dict[str, tuple[str, dict[Severity, int], dict[Severity, int]]] = {
    # two CVE-2019-14697 (musl, musl-utils), four MEDIUM (CVE-2019-1549/1551 in libcrypto and libssl)
    "trivy/alpine-39.json": ("trivy", counts(CRITICAL=2, MEDIUM=4), counts(CRITICAL=1, MEDIUM=2)),
    "trivy/fluentd-gems.json": ("trivy", counts(CRITICAL=1, HIGH=1), counts(CRITICAL=1, HIGH=1)),
    "trivy/debian-buster.json": ("trivy", counts(CRITICAL=1, LOW=1), counts(CRITICAL=1, LOW=1)),
    "trivy/sl-micro-rancher5.4.json": ("trivy", counts(), counts()),  # no Vulnerabilities key
    "trivy/alpine-39-skip.json": ("trivy", counts(), counts()),  # no Results key
    "osv/GHSA-838r-hvwh-24h8.json": ("osv", counts(CRITICAL=1), counts(CRITICAL=1)),
    "osv/UBUNTU-CVE-2025-38094.json": ("osv", counts(MEDIUM=1), counts(MEDIUM=1)),  # Ubuntu priority
    "osv/GO-2024-2963.json": ("osv", counts(UNKNOWN=1), counts(UNKNOWN=1)),  # Go: never a severity
    # per package one group of aliases (osv-scanner's `groups`), the highest severity of its records:
    # GHSA HIGH + RUSTSEC (none), GHSA MODERATE + RUSTSEC (none), GHSA CRITICAL + RUSTSEC (CVSS 9.8)
    "osv/osv-scanner-multiple-packages-with-vulns.json": (
        "osv-scanner",
        counts(CRITICAL=1, HIGH=1, MEDIUM=1),
        counts(CRITICAL=1, HIGH=1, MEDIUM=1),
    ),
    "osv/osv-scanner-results-empty.json": ("osv-scanner", counts(), counts()),
}


def read(name: str) -> bytes:
    return (TESTDATA / name).read_bytes()


def test_every_report_in_the_testdata_is_covered() -> None:
    present = {f"{p.parent.name}/{p.name}" for d in ("trivy", "osv") for p in (TESTDATA / d).glob("*.json")}
    assert present == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED), ids=sorted(EXPECTED))
def test_counts_by_severity(name: str) -> None:
    report = parse_report(read(name), name)
    fmt, raw, unique = EXPECTED[name]
    assert (
        report.format,
        count_by_severity(report.findings),
        count_by_severity(deduplicate(report.findings)),
    ) == (
        fmt,
        raw,
        unique,
    )


TRIVY = sorted(name for name in EXPECTED if name.startswith("trivy/"))


@pytest.mark.parametrize("name", TRIVY, ids=TRIVY)
def test_trivy_findings_are_counted_as_trivy_counts_them(name: str) -> None:
    """Trivy's table prints, per severity, one per entry of `Results[].Vulnerabilities` (its own data)."""
    document = json.loads(read(name))
    entries = [v for r in document.get("Results") or [] for v in r.get("Vulnerabilities") or []]
    printed = counts(**Counter(entry["Severity"] for entry in entries))
    assert count_by_severity(parse_report(read(name), name).findings) == printed


def test_trivy_findings() -> None:
    report = parse_report(read("trivy/debian-buster.json"), "debian-buster.json")
    assert report.findings == (
        Finding(
            id="CVE-2019-18224",
            severity="CRITICAL",
            packages=("libidn2-0@2.0.5-1",),
            related=("DSA-4613-1",),  # VendorIDs: an advisory that may fix several vulnerabilities
            severity_source="trivy: nvd",
        ),
        Finding(
            id="CVE-2019-18276",
            severity="LOW",
            packages=("bash@5.0-4",),  # Status affected, no FixedVersion: still a finding
            severity_source="trivy: debian",
        ),
    )


def test_trivy_same_vulnerability_in_two_packages_is_two_findings_of_one_vulnerability() -> None:
    report = parse_report(read("trivy/alpine-39.json"), "alpine-39.json")
    assert [f.id for f in report.findings] == [
        "CVE-2019-14697",
        "CVE-2019-14697",
        "CVE-2019-1549",
        "CVE-2019-1549",
        "CVE-2019-1551",
        "CVE-2019-1551",
    ]
    assert deduplicate(report.findings) == (
        Finding(
            "CVE-2019-14697", "CRITICAL", ("musl-utils@1.1.20-r4", "musl@1.1.20-r4"), (), (), "trivy: nvd"
        ),
        Finding(
            "CVE-2019-1549", "MEDIUM", ("libcrypto1.1@1.1.1b-r1", "libssl1.1@1.1.1b-r1"), (), (), "trivy: nvd"
        ),
        Finding(
            "CVE-2019-1551", "MEDIUM", ("libcrypto1.1@1.1.1b-r1", "libssl1.1@1.1.1b-r1"), (), (), "trivy: nvd"
        ),
    )


def test_osv_records() -> None:
    ghsa = parse_report(read("osv/GHSA-838r-hvwh-24h8.json"), "ghsa.json")
    ubuntu = parse_report(read("osv/UBUNTU-CVE-2025-38094.json"), "ubuntu.json")
    go = parse_report(read("osv/GO-2024-2963.json"), "go.json")
    assert ghsa.findings + ubuntu.findings + go.findings == (
        Finding(
            "GHSA-838r-hvwh-24h8",
            "CRITICAL",
            ("org.apache.any23:apache-any23",),
            ("CVE-2021-38555",),
            severity_source="database_specific.severity",
        ),
        Finding(
            "UBUNTU-CVE-2025-38094",
            "MEDIUM",
            ("linux",),
            related=("CVE-2025-38094",),  # `upstream`, not an alias: never merged on it
            severity_source="Ubuntu priority",
        ),
        Finding(
            "GO-2024-2963",
            "UNKNOWN",
            ("stdlib",),
            ("CVE-2024-24791",),
            severity_source="none: the record has no database_specific.severity, CVSS v3/v4 vector or "
            "Ubuntu priority",
        ),
    )


def test_osv_scanner_output_merges_aliases_per_package() -> None:
    """Each package lists a GHSA record and the RUSTSEC record it aliases (one group in `groups`): one
    finding, as osv-scanner counts it, with the GHSA's severity (the RUSTSEC records have none, but for
    RUSTSEC-2021-0003's CVSS 9.8)."""
    report = parse_report(read("osv/osv-scanner-multiple-packages-with-vulns.json"), "scan.json")
    assert report.findings == (
        Finding(
            "GHSA-43w2-9j62-hq99",
            "CRITICAL",
            ("smallvec@1.6.0",),
            ("CVE-2021-25900", "RUSTSEC-2021-0003"),
            severity_source="database_specific.severity",
        ),
        Finding(
            "GHSA-qc84-gqf4-9926",
            "HIGH",
            ("crossbeam-utils@0.6.6",),
            ("CVE-2022-23639", "RUSTSEC-2022-0041"),
            severity_source="database_specific.severity",
        ),
        Finding(
            "GHSA-wfg4-322g-9vqv",
            "MEDIUM",
            ("memoffset@0.5.6",),
            ("RUSTSEC-2023-0045",),
            severity_source="database_specific.severity",
        ),
    )
    assert deduplicate(report.findings) == report.findings  # already one per vulnerability and package


def osv_scanner(*sources: list[tuple[str, str]]) -> bytes:
    """osv-scanner output made here: per source, (package, os_package_name) entries with CVE-1 each."""
    return json.dumps(
        {
            "results": [
                {
                    "source": {"path": f"/source/{n}", "type": "os"},
                    "packages": [
                        {
                            "package": {
                                "name": name,
                                "os_package_name": binary,
                                "version": "1",
                                "ecosystem": "X",
                            },
                            "vulnerabilities": [{"id": "CVE-1", "modified": "2024-01-01T00:00:00Z"}],
                        }
                        for name, binary in entries
                    ],
                }
                for n, entries in enumerate(sources)
            ]
        }
    ).encode()


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (osv_scanner([("musl", "musl"), ("musl", "musl-utils")]), 1),  # one source package, two binaries
        (osv_scanner([("musl", "musl")], [("musl", "musl")]), 2),  # in two sources
        (osv_scanner([("musl", "musl"), ("zlib", "zlib")]), 2),  # in two packages
    ],
    ids=["binaries-of-one-source-package", "two-sources", "two-packages"],
)
def test_osv_scanner_counts_a_package_of_a_source_once(data: bytes, found: int) -> None:
    """As osv-scanner's summary: entries of one source with the same ecosystem, name and version are one."""
    assert count_by_severity(parse_report(data, "scan.json").findings) == counts(UNKNOWN=found)


def ghsa_variant(**changes: Any) -> bytes:
    """The GHSA record, changed in memory (None deletes a key)."""
    record = json.loads(read("osv/GHSA-838r-hvwh-24h8.json"))
    for key, value in changes.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return json.dumps(record).encode()


NO_SEVERITY = "none: the record has no database_specific.severity, CVSS v3/v4 vector or Ubuntu priority"


@pytest.mark.parametrize(
    ("changes", "severity", "source"),
    [
        (
            {"database_specific": None},
            "CRITICAL",
            "CVSS_V3 9.1 (CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:N)",
        ),
        ({"database_specific": {"severity": "MODERATE"}}, "MEDIUM", "database_specific.severity"),
        ({"database_specific": {"severity": "low"}}, "LOW", "database_specific.severity"),
        (
            {
                "database_specific": None,
                "severity": [
                    {"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H"},
                    {"type": "CVSS_V3", "score": "CVSS:3.0/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"},
                ],
            },
            "HIGH",
            "CVSS_V3 8.1 (CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H)",
        ),
        (
            {
                "database_specific": None,
                "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N"}],
            },
            "UNKNOWN",
            f"{NO_SEVERITY}; CVSS_V3 vector 'CVSS:3.1/AV:N/AC:L/PR:N' is invalid: "
            'Missing mandatory metrics "UI, S, C, I, A"',
        ),
        (
            {
                "database_specific": None,
                "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N"}],
            },
            "LOW",
            "CVSS_V3 0.0 (CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N)",
        ),
        (
            {
                "database_specific": None,
                "severity": [
                    {
                        "type": "CVSS_V4",
                        "score": "CVSS:4.0/AV:N/AC:L/AT:N/PR:H/UI:N/VC:L/VI:L/VA:N/SC:N/SI:N/SA:N",
                    }
                ],
            },
            "MEDIUM",
            "CVSS_V4 5.1 (CVSS:4.0/AV:N/AC:L/AT:N/PR:H/UI:N/VC:L/VI:L/VA:N/SC:N/SI:N/SA:N)",
        ),
        (
            {"database_specific": None, "severity": [{"type": "Ubuntu", "score": "negligible"}]},
            "LOW",
            "Ubuntu priority",
        ),
        ({"database_specific": None, "severity": None}, "UNKNOWN", NO_SEVERITY),
    ],
    ids=[
        "cvss-v3",
        "moderate",
        "lowercase",
        "highest-cvss-v3",
        "bad-vector",
        "cvss-zero",
        "cvss-v4",
        "ubuntu",
        "none",
    ],
)
def test_osv_severity(changes: dict[str, Any], severity: str, source: str) -> None:
    (finding,) = parse_report(ghsa_variant(**changes), "r.json").findings
    assert (finding.severity, finding.severity_source) == (severity, source)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (read("oci/ociv1.manifest.json"), "unrecognised report"),  # a real JSON document, of another kind
        (b'{"foo": 1}', "unrecognised report"),
        (b"[]", "unrecognised report"),
        (b"null", "unrecognised report"),
        (b'{"id": "GHSA-1"}', "unrecognised report"),  # no `modified`: not an OSV record
        (b'{"SchemaVersion": 1, "Results": []}', "unsupported Trivy SchemaVersion 1 (2 expected)"),
        (b'{"SchemaVersion": 2, "Results": {}}', "Results is not a list"),
        (
            b'{"SchemaVersion": 2, "Results": [{"Vulnerabilities": [{"Severity": "LOW"}]}]}',
            "Results[0].Vulnerabilities[0].VulnerabilityID is missing or not a non-empty string",
        ),
        (b'{"results": null}', "results is not a list"),
        (
            b'{"results": [{"packages": [{"vulnerabilities": []}]}]}',
            "results[0].packages[0].package is not an object",
        ),
        (
            b'{"id": "X-1", "modified": "2024-01-01T00:00:00Z", "aliases": "CVE-1"}',
            "record.aliases is not a list",
        ),
        (b'{"SchemaVersion": 2,\n "Results": [', "the report is not valid JSON: Expecting value"),
        (b"\xff\xfe\x00", "the report is not UTF-8 JSON"),
    ],
    ids=[
        "oci-manifest",
        "other-object",
        "array",
        "null",
        "id-without-modified",
        "trivy-schema-1",
        "trivy-results-object",
        "trivy-no-id",
        "osv-scanner-results-null",
        "osv-scanner-no-package",
        "osv-aliases-string",
        "truncated",
        "not-utf8",
    ],
)
def test_unrecognised_or_malformed_report_is_an_error_naming_the_file(data: bytes, message: str) -> None:
    with pytest.raises(ReportError) as caught:
        parse_report(data, "mirror/reports/sha256-00/scan.json")
    assert caught.value.file == "mirror/reports/sha256-00/scan.json"
    assert caught.value.message.startswith(message)
    assert str(caught.value).startswith("mirror/reports/sha256-00/scan.json")


def test_unrecognised_error_says_what_was_expected() -> None:
    with pytest.raises(ReportError) as caught:
        parse_report(b'{"foo": 1}', "x/scan.json")
    assert str(caught.value) == (
        "x/scan.json: unrecognised report: neither Trivy JSON (an object with SchemaVersion 2) nor OSV "
        "(one record with id and modified, or osv-scanner output with results)"
    )


def test_trivy_unknown_severity_word() -> None:
    vulnerability = {"VulnerabilityID": "CVE-1", "Severity": "SEVERE"}
    data = json.dumps({"SchemaVersion": 2, "Results": [{"Vulnerabilities": [vulnerability]}]}).encode()
    assert parse_report(data, "r.json").findings == (
        Finding("CVE-1", "UNKNOWN", severity_source="trivy: Severity 'SEVERE'"),
    )


def test_deduplicate_is_transitive_keeps_the_worst_and_ignores_order() -> None:
    findings = [
        Finding("CVE-1", "LOW", ("a@1",), severity_source="trivy"),
        Finding("GHSA-1", "HIGH", ("a@1",), ("CVE-1",), severity_source="database_specific.severity"),
        Finding("RUSTSEC-1", "UNKNOWN", ("b@2",), ("GHSA-1",), ("DSA-1",)),
        Finding("CVE-2", "MEDIUM", ("c@3",), related=("DSA-1",)),  # same advisory, another vulnerability
    ]
    expected = (
        Finding(
            "CVE-1",
            "HIGH",
            ("a@1", "b@2"),
            ("GHSA-1", "RUSTSEC-1"),
            ("DSA-1",),
            "database_specific.severity",
        ),
        Finding("CVE-2", "MEDIUM", ("c@3",), related=("DSA-1",)),
    )
    generator = random.Random(5)
    for _ in range(20):
        generator.shuffle(findings)
        assert deduplicate(findings) == expected


def trivy(*found: tuple[str, str]) -> Report:
    """A Trivy report of (id, package) findings, all CRITICAL."""
    return Report("trivy", tuple(Finding(i, "CRITICAL", (p,), severity_source="trivy") for i, p in found))


def test_vulnerabilities_count_the_most_findings_any_one_report_has() -> None:
    alpine = parse_report(read("trivy/alpine-39.json"), "alpine-39.json")
    merged = deduplicate(alpine.findings)
    assert vulnerabilities([alpine]) == tuple(Vulnerability(f, 2) for f in merged)
    assert vulnerabilities([alpine, alpine]) == vulnerabilities([alpine])  # the same scan twice
    osv_scan = Report(  # osv-scanner: the source package musl only, under an alias
        "osv-scanner",
        (Finding("GHSA-musl", "HIGH", ("musl@1.1.20-r4",), ("CVE-2019-14697",)),),
    )
    record = Report("osv", (Finding("CVE-2019-14697", "UNKNOWN", ("musl",)),))
    (musl, *_) = vulnerabilities([osv_scan, alpine, record])
    assert musl == Vulnerability(
        Finding(
            "CVE-2019-14697",
            "CRITICAL",
            ("musl", "musl-utils@1.1.20-r4", "musl@1.1.20-r4"),
            ("GHSA-musl",),
            severity_source="trivy: nvd",
        ),
        2,
    )


def test_vulnerabilities_within_one_report_every_finding_counts() -> None:
    """One CVE in the same package at two paths (two jars), and in another package: 3, as Trivy prints."""
    report = trivy(
        ("CVE-1", "log4j@2.14.1"), ("CVE-1", "log4j@2.14.1"), ("CVE-1", "other@1"), ("CVE-2", "x@1")
    )
    other = trivy(("CVE-1", "log4j@2.14.1"), ("CVE-2", "x@1"), ("CVE-2", "y@1"))
    expected = (
        Vulnerability(Finding("CVE-1", "CRITICAL", ("log4j@2.14.1", "other@1"), severity_source="trivy"), 3),
        Vulnerability(Finding("CVE-2", "CRITICAL", ("x@1", "y@1"), severity_source="trivy"), 2),
    )
    assert vulnerabilities([report, other]) == vulnerabilities([other, report]) == expected
    assert vulnerabilities([]) == ()


def test_public_api() -> None:
    assert sorted(stella_scan.__all__) == [
        "Finding",
        "GATE",
        "LIMITS",
        "OPTIONS",
        "Report",
        "ReportError",
        "ReportFormat",
        "SEVERITIES",
        "Severity",
        "Vulnerability",
        "VulnerabilityGate",
        "__version__",
        "count_by_severity",
        "deduplicate",
        "parse_report",
        "reports_dir",
        "vulnerabilities",
        "vulnerability",
    ]
