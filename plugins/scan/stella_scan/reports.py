"""Parse vulnerability scan reports into findings: Trivy JSON and OSV, told apart by content.

What it does: `parse_report(data, path)` turns the bytes of one report into a `Report`: its format and
its findings, each with an id, a severity (CRITICAL, HIGH, MEDIUM, LOW or UNKNOWN), the packages it
was found in, its aliases, and where the severity came from. A report's findings are counted as its
scanner counts them: one per vulnerability in one package. Three shapes are understood:

- `trivy`: `trivy image --format json` output, `SchemaVersion` 2, one finding per entry of
  `Results[].Vulnerabilities[]`, which is what Trivy's table counts (one CVE in two packages: 2)
  (severity: Trivy's `Severity`; related ids: `VendorIDs`);
- `osv`: one OSV record (an object with `id` and `modified`): one finding;
- `osv-scanner`: osv-scanner JSON output, OSV records in `results[].packages[].vulnerabilities[]`; the
  records of one package of one result (source) that are linked by `aliases` are one finding
  (osv-scanner's `groups`, which is what its summary counts), with the highest known severity of the
  records. Entries of one result naming the same package (ecosystem, name, version) are one package.

An OSV record's severity is the first of: `database_specific.severity` (GitHub's MODERATE is MEDIUM);
the highest base severity of its CVSS v3 vectors, then of its CVSS v4 vectors (scored by the `cvss`
library; a score of 0.0 counts as LOW); its Ubuntu priority (`negligible` counts as LOW); else UNKNOWN,
and `severity_source` says that the record carries none. A report without `Results` (Trivy) or with an
empty `results` list (osv-scanner) has no findings: a clean scan. A document of any other shape is a
`ReportError` naming the file.

`deduplicate` merges the findings of all reports of one image that name the same vulnerability (the
same id, or ids linked through `aliases`), keeping the highest known severity. `vulnerabilities` does
the same for whole reports and says how many findings each vulnerability counts as: the most that any
one report has for it, so a second scan of the same image never counts a finding twice.

PURE: bytes in, values out. No disk, network, clock or Git; never prints.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from cvss import CVSS3, CVSS4  # type: ignore[import-untyped]
from cvss.exceptions import CVSSError  # type: ignore[import-untyped]

from reconciler.api import InvalidInput

__all__ = [
    "SEVERITIES",
    "Finding",
    "Report",
    "ReportError",
    "ReportFormat",
    "Severity",
    "Vulnerability",
    "count_by_severity",
    "deduplicate",
    "parse_report",
    "vulnerabilities",
]

Severity = Literal["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"]
SEVERITIES: Final[tuple[Severity, ...]] = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")
"""Most severe first; UNKNOWN last (a finding whose severity nobody stated)."""

ReportFormat = Literal["trivy", "osv", "osv-scanner"]

_RANK: Final[dict[str, int]] = {name: rank for rank, name in enumerate(SEVERITIES)}
_WORDS: Final[dict[str, Severity]] = {
    "CRITICAL": "CRITICAL",
    "HIGH": "HIGH",
    "MEDIUM": "MEDIUM",
    "MODERATE": "MEDIUM",
    "LOW": "LOW",
    "UNKNOWN": "UNKNOWN",
}
"""Qualitative words of Trivy and of `database_specific.severity` (GitHub: LOW, MODERATE, HIGH, CRITICAL)."""
_CVSS_WORDS: Final[dict[str, Severity]] = {
    "Critical": "CRITICAL",
    "High": "HIGH",
    "Medium": "MEDIUM",
    "Low": "LOW",
    "None": "LOW",
}
_UBUNTU_WORDS: Final[dict[str, Severity]] = {
    "critical": "CRITICAL",
    "high": "HIGH",
    "medium": "MEDIUM",
    "low": "LOW",
    "negligible": "LOW",
}
_NO_SEVERITY: Final = (
    "none: the record has no database_specific.severity, CVSS v3/v4 vector or Ubuntu priority"
)


class ReportError(InvalidInput):
    """A report that cannot be read: not JSON, not a known format, or a malformed entry. Names the file."""


@dataclass(frozen=True)
class Finding:
    """One vulnerability found in an image."""

    id: str
    severity: Severity
    packages: tuple[str, ...] = ()
    """Where it was found, `name@version` (or `name` when the report gives no version); sorted."""
    aliases: tuple[str, ...] = ()
    """Other ids of the same vulnerability (OSV `aliases`); sorted, without `id`."""
    related: tuple[str, ...] = ()
    """Ids that cover this finding without being the same vulnerability: OSV `upstream` ids, and the
    vendor advisories of Trivy's `VendorIDs` (one advisory may fix several vulnerabilities). Sorted.
    Only blocklists look at them: they never merge findings, and exceptions do not match them."""
    severity_source: str = ""
    """Where `severity` came from (`trivy`, `database_specific.severity`, `CVSS_V3 9.8`, ...), or why
    it is UNKNOWN."""

    @property
    def ids(self) -> frozenset[str]:
        """The id and every alias: what blocklists and exceptions are matched against."""
        return frozenset((self.id, *self.aliases))


@dataclass(frozen=True)
class Report:
    """One parsed report: its format and its findings as its scanner counts them, sorted by id.

    The same id may be several findings (one CVE in `musl` and in `musl-utils`): not deduplicated."""

    format: ReportFormat
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class Vulnerability:
    """One vulnerability of an image, over all its reports, and how many findings it counts as."""

    finding: Finding
    """Its findings in every report merged into one (`deduplicate`): the smallest id, every other id as
    an alias, every package, the highest known severity."""
    findings: int
    """How many findings it counts as: the most that any one report has for it (>= 1)."""


def count_by_severity(findings: Iterable[Finding]) -> dict[Severity, int]:
    """How many findings of each severity; every severity is a key, most severe first.

    On a report's findings, this is what its scanner prints (Trivy's `Total:` line of a table)."""
    counts: dict[Severity, int] = dict.fromkeys(SEVERITIES, 0)
    for finding in findings:
        counts[finding.severity] += 1
    return counts


# --- entry point ---------------------------------------------------------------------------------


def parse_report(data: bytes, path: str) -> Report:
    """The findings of one report's bytes; `path` only names the file in errors."""
    try:
        document = json.loads(data)
    except UnicodeDecodeError as exc:
        raise ReportError("the report is not UTF-8 JSON", file=path) from exc
    except json.JSONDecodeError as exc:
        raise ReportError(f"the report is not valid JSON: {exc.msg}", file=path, line=exc.lineno) from exc
    if isinstance(document, dict):
        if "SchemaVersion" in document:
            return Report("trivy", _sorted(_trivy(document, path)))
        if "results" in document:
            return Report("osv-scanner", _sorted(_osv_scanner(document, path)))
        if isinstance(document.get("id"), str) and "modified" in document:
            return Report("osv", _sorted(_osv_findings(document, path, "record", None)))
    raise ReportError(
        "unrecognised report: neither Trivy JSON (an object with SchemaVersion 2) nor OSV (one record "
        "with id and modified, or osv-scanner output with results)",
        file=path,
    )


def _key(f: Finding) -> tuple[str, int, tuple[str, ...], tuple[str, ...], tuple[str, ...], str]:
    return (f.id, _RANK[f.severity], f.packages, f.aliases, f.related, f.severity_source)


def _sorted(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """By id, then by every other field: the order never depends on the input's."""
    return tuple(sorted(findings, key=_key))


# --- Trivy ---------------------------------------------------------------------------------------


def _trivy(document: Mapping[str, Any], path: str) -> list[Finding]:
    version = document.get("SchemaVersion")
    if version != 2:
        raise ReportError(f"unsupported Trivy SchemaVersion {version!r} (2 expected)", file=path)
    findings: list[Finding] = []
    for r, result in enumerate(_list(document.get("Results"), "Results", path)):
        where = f"Results[{r}]"
        if not isinstance(result, dict):
            raise ReportError(f"{where} is not an object", file=path)
        for v, vuln in enumerate(_list(result.get("Vulnerabilities"), f"{where}.Vulnerabilities", path)):
            at = f"{where}.Vulnerabilities[{v}]"
            if not isinstance(vuln, dict):
                raise ReportError(f"{at} is not an object", file=path)
            ident = _text(vuln.get("VulnerabilityID"), f"{at}.VulnerabilityID", path)
            word = vuln.get("Severity")
            severity = _WORDS.get(word.upper(), "UNKNOWN") if isinstance(word, str) else "UNKNOWN"
            source = "trivy"
            if severity == "UNKNOWN":
                source = f"trivy: Severity {word!r}"
            elif isinstance(vuln.get("SeveritySource"), str):
                source = f"trivy: {vuln['SeveritySource']}"
            name = vuln.get("PkgName")
            installed = vuln.get("InstalledVersion")
            packages: tuple[str, ...] = ()
            if isinstance(name, str) and name:
                packages = (f"{name}@{installed}" if isinstance(installed, str) and installed else name,)
            vendor = _strings(vuln.get("VendorIDs"), f"{at}.VendorIDs", path)
            findings.append(
                Finding(
                    id=ident,
                    severity=severity,
                    packages=packages,
                    related=tuple(sorted(set(vendor) - {ident})),
                    severity_source=source,
                )
            )
    return findings


# --- OSV -----------------------------------------------------------------------------------------


def _osv_scanner(document: Mapping[str, Any], path: str) -> list[Finding]:
    """One finding per alias group of each package of each result (source), as osv-scanner's summary
    counts them: entries of one source naming the same package (ecosystem, name, version) are one
    package, as for OS packages, listed under their source package once per binary package."""
    findings: list[Finding] = []
    for r, result in enumerate(_list(document.get("results"), "results", path, required=True)):
        where = f"results[{r}]"
        if not isinstance(result, dict):
            raise ReportError(f"{where} is not an object", file=path)
        packages: dict[tuple[str, str, str], list[Finding]] = {}
        for p, entry in enumerate(_list(result.get("packages"), f"{where}.packages", path)):
            at = f"{where}.packages[{p}]"
            if not isinstance(entry, dict):
                raise ReportError(f"{at} is not an object", file=path)
            package = entry.get("package")
            if not isinstance(package, dict):
                raise ReportError(f"{at}.package is not an object", file=path)
            name = _text(package.get("name"), f"{at}.package.name", path)
            version, ecosystem = (package.get(k) for k in ("version", "ecosystem"))
            version = version if isinstance(version, str) else ""
            key = (ecosystem if isinstance(ecosystem, str) else "", name, version)
            label = f"{name}@{version}" if version else name
            records = packages.setdefault(key, [])
            for v, record in enumerate(_list(entry.get("vulnerabilities"), f"{at}.vulnerabilities", path)):
                records.extend(_osv_findings(record, path, f"{at}.vulnerabilities[{v}]", label))
        for records in packages.values():
            findings.extend(deduplicate(records))
    return findings


def _osv_findings(record: object, path: str, where: str, package: str | None) -> list[Finding]:
    """One OSV record as a finding; `package` is the scanned package (None: the record's `affected`)."""
    if not isinstance(record, dict):
        raise ReportError(f"{where} is not an object", file=path)
    ident = _text(record.get("id"), f"{where}.id", path)
    aliases = _strings(record.get("aliases"), f"{where}.aliases", path)
    upstream = _strings(record.get("upstream"), f"{where}.upstream", path)
    affected = _list(record.get("affected"), f"{where}.affected", path)
    if package is not None:
        packages: tuple[str, ...] = (package,)
    else:
        names = set()
        for item in affected:
            pkg = item.get("package") if isinstance(item, dict) else None
            if isinstance(pkg, dict) and isinstance(pkg.get("name"), str) and pkg["name"]:
                names.add(pkg["name"])
        packages = tuple(sorted(names))
    severity, source = _osv_severity(record, affected, path, where)
    return [
        Finding(
            id=ident,
            severity=severity,
            packages=packages,
            aliases=tuple(sorted(set(aliases) - {ident})),
            related=tuple(sorted(set(upstream) - {ident})),
            severity_source=source,
        )
    ]


def _osv_severity(
    record: Mapping[str, Any], affected: list[Any], path: str, where: str
) -> tuple[Severity, str]:
    specific = record.get("database_specific")
    if isinstance(specific, dict) and isinstance(specific.get("severity"), str):
        word = _WORDS.get(specific["severity"].upper())
        if word is not None and word != "UNKNOWN":
            return word, "database_specific.severity"
    scores: list[tuple[str, str]] = []
    entries = [(f"{where}.severity", record.get("severity"))]
    entries += [
        (f"{where}.affected[{i}].severity", item.get("severity"))
        for i, item in enumerate(affected)
        if isinstance(item, dict)
    ]
    for at, value in entries:
        for s, item in enumerate(_list(value, at, path)):
            if not isinstance(item, dict):
                raise ReportError(f"{at}[{s}] is not an object", file=path)
            kind, score = item.get("type"), item.get("score")
            if isinstance(kind, str) and isinstance(score, str):
                scores.append((kind, score))
    problems: list[str] = []
    for kind, scorer in (("CVSS_V3", CVSS3), ("CVSS_V4", CVSS4)):
        best: tuple[Severity, str] | None = None
        for vector in sorted({score for k, score in scores if k == kind}):
            try:
                parsed = scorer(vector)
                word = parsed.severities()[0] if kind == "CVSS_V3" else parsed.severity
                severity = _CVSS_WORDS[str(word)]
                detail = f"{kind} {parsed.base_score} ({vector})"
            except (CVSSError, KeyError, ValueError, IndexError) as exc:
                problems.append(f"{kind} vector {vector!r} is invalid: {exc}")
                continue
            if best is None or _RANK[severity] < _RANK[best[0]]:
                best = (severity, detail)
        if best is not None:
            return best
    ubuntu = sorted(
        {
            _UBUNTU_WORDS[score.lower()]
            for k, score in scores
            if k == "Ubuntu" and score.lower() in _UBUNTU_WORDS
        },
        key=_RANK.__getitem__,
    )
    if ubuntu:
        return ubuntu[0], "Ubuntu priority"
    return "UNKNOWN", "; ".join([_NO_SEVERITY, *problems])


# --- deduplication -------------------------------------------------------------------------------


def deduplicate(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """One finding per vulnerability: findings sharing an id or alias (transitively) are merged.

    The merged finding's id is the smallest of the merged findings' ids; its aliases are every other
    id and alias; its packages and related ids are the union; its severity is the highest known one
    (UNKNOWN only when all are unknown). Sorted by id; the result does not depend on the input order.
    """
    items = sorted(set(findings), key=_key)
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for index, finding in enumerate(items):
        for ident in sorted(finding.ids):
            if ident in owner:
                a, b = root(owner[ident]), root(index)
                parent[max(a, b)] = min(a, b)
            else:
                owner[ident] = index
    groups: dict[int, list[Finding]] = {}
    for index, finding in enumerate(items):
        groups.setdefault(root(index), []).append(finding)
    return _sorted(_merge(group) for group in groups.values())


def vulnerabilities(reports: Iterable[Report]) -> tuple[Vulnerability, ...]:
    """One per vulnerability of an image (`deduplicate` over every report's findings), with how many
    findings it counts as: the most that any one report has for it.

    Within a report every finding counts (its scanner counted it); across reports of the same image the
    largest count wins, because two scans of one image that find the same vulnerability found the same
    thing. Sorted by id; the result does not depend on the order of reports or findings.
    """
    reports = list(reports)
    merged = deduplicate(f for report in reports for f in report.findings)
    owner = {ident: index for index, finding in enumerate(merged) for ident in finding.ids}
    most = [0] * len(merged)
    for report in reports:
        for index, count in Counter(owner[f.id] for f in report.findings).items():
            most[index] = max(most[index], count)
    return tuple(Vulnerability(finding, count) for finding, count in zip(merged, most, strict=True))


def _merge(group: list[Finding]) -> Finding:
    if len(group) == 1:
        return group[0]
    ident = min(f.id for f in group)
    worst = min(group, key=lambda f: (_RANK[f.severity], f.id))
    return Finding(
        id=ident,
        severity=worst.severity,
        packages=tuple(sorted({p for f in group for p in f.packages})),
        aliases=tuple(sorted({i for f in group for i in f.ids} - {ident})),
        related=tuple(sorted({r for f in group for r in f.related})),
        severity_source=worst.severity_source,
    )


# --- helpers -------------------------------------------------------------------------------------


def _list(value: object, where: str, path: str, *, required: bool = False) -> list[Any]:
    """`value` as a list; absent or null is empty (unless `required`); anything else is an error."""
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise ReportError(f"{where} is not a list", file=path)
    return value


def _text(value: object, where: str, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ReportError(f"{where} is missing or not a non-empty string", file=path)
    return value


def _strings(value: object, where: str, path: str) -> list[str]:
    items = _list(value, where, path)
    if not all(isinstance(item, str) and item for item in items):
        raise ReportError(f"{where} must be a list of non-empty strings", file=path)
    return cast(list[str], items)
