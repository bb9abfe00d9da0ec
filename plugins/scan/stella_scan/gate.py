"""The `vulnerability` gate: judge a release by the offline scan reports of its image digests.

What it does: for each component of the release, the reports for its digest `sha256:<hex>` are the
`*.json` files in `<mirror>/reports/sha256-<hex>/` of the repository at the decision's commit (read
through `ctx.files`). Every report is parsed (`reports.parse_report`: Trivy JSON or OSV), and the
findings of all reports of one digest are grouped by vulnerability (`reports.vulnerabilities`: one id,
or ids linked by aliases). Findings are counted as the scanners count them, one per vulnerability in
one package (one CVE in `musl` and `musl-utils` is 2 findings, 1 distinct id), and a vulnerability
that several reports found counts as the most findings any one of them has. The environment's
options decide:

- `maxCritical`, `maxHigh`, `maxMedium`, `maxLow`, `maxUnknown`: the most findings of that severity an
  image may have (an int >= 0; absent: no limit), compared with the findings, not the distinct ids;
- `blocklist`: ids that fail the gate whenever found (KEV-style), matched against a finding's id, its
  aliases and its related ids (OSV `upstream`, Trivy `VendorIDs`);
- `exceptions`: `{id, until, reason}`, matched against a finding's id and aliases. While it applies an
  excepted finding is neither counted nor blocklisted. `until` is RFC 3339 with a time zone (the
  exception applies up to and including that instant) or a date (up to the end of that day, UTC); once
  `ctx.now` is past it, the exception no longer applies, and the result says so.

Results (reason codes are stable): `pass` `within-thresholds`; `fail` `blocklisted`,
`too-many-critical`, `too-many-high`, `too-many-medium`, `too-many-low`, `too-many-unknown` (the first
that applies, in that order; the message lists every violation); `pending` `no-scan-report` (a digest
without any report: fail closed); `error` `invalid-report`, `unknown-option`, `invalid-option`,
`no-files`. A violation is final even when another component has no report, or an invalid one (the
message and facts name those too). Messages give both numbers (`web: 2 CRITICAL (1 distinct id)`).
`facts` name every report used (path, sha256 of its bytes, format), per component the findings
(`counts`) and the distinct ids (`distinctIds`) of each severity, and the exceptions applied (JSON
values, lists sorted).

PURE: reads only `ctx` (files through `ctx.files`, the time from `ctx.now`); no clock, network or Git;
the result does not depend on the order of files, components or options.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import PurePosixPath
from typing import Any, Final

from reconciler.api import FileSource, GateContext, GateResult, PluginManifest, as_utc, rfc3339

from .reports import SEVERITIES, Report, ReportError, Severity, Vulnerability, parse_report, vulnerabilities

__all__ = ["GATE", "LIMITS", "OPTIONS", "VulnerabilityGate", "reports_dir", "vulnerability"]

GATE: Final = "vulnerability"

LIMITS: Final[dict[Severity, str]] = {
    "CRITICAL": "maxCritical",
    "HIGH": "maxHigh",
    "MEDIUM": "maxMedium",
    "LOW": "maxLow",
    "UNKNOWN": "maxUnknown",
}
"""The option that limits each severity."""

OPTIONS: Final = frozenset({*LIMITS.values(), "blocklist", "exceptions"})

MAX_IDS: Final = 5
"""How many ids a message lists for one violation before it says `and N more`."""

_RFC3339_RE: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$"
)
_DATE_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _package_version() -> str:
    try:
        return importlib.metadata.version("stella-scan")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - only when not installed
        return "0+unknown"


def reports_dir(mirror: str, digest: str) -> str:
    """`<mirror>/reports/sha256-<hex>`: where the reports of the image with `digest` live."""
    parts = [p for p in PurePosixPath(mirror or ".").parts if p not in (".", "/")]
    return "/".join([*parts, "reports", digest.replace(":", "-", 1)])


# --- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Exception:
    """One entry of `exceptions`."""

    id: str
    until: str
    """As normalised: `2026-12-31T00:00:00Z` or `2026-12-31`."""
    reason: str
    last: datetime | None = None
    """The last instant it applies (an RFC 3339 `until`)."""
    day: date | None = None
    """The last day it applies (a date `until`), through the end of that day in UTC."""

    def applies(self, now: datetime) -> bool:
        """Whether it still applies at `now` (UTC)."""
        if self.last is not None:
            return now <= self.last
        return self.day is not None and now.date() <= self.day

    def fact(self) -> dict[str, object]:
        return {"id": self.id, "until": self.until, "reason": self.reason}


@dataclass(frozen=True)
class _Options:
    limits: dict[Severity, int] = field(default_factory=dict)
    blocklist: frozenset[str] = frozenset()
    exceptions: tuple[_Exception, ...] = ()

    def describe_limits(self) -> str:
        parts = [f"{LIMITS[s]} {self.limits[s]}" for s in SEVERITIES if s in self.limits]
        return ", ".join(parts) if parts else "no limits set"


def _parse_options(options: Mapping[str, Any]) -> _Options | GateResult:
    unknown = sorted(str(k) for k in options if k not in OPTIONS)
    if unknown:
        return GateResult(
            GATE,
            "error",
            "unknown-option",
            f"unknown option(s) {', '.join(unknown)} of the vulnerability gate "
            f"(known: {', '.join(sorted(OPTIONS))})",
            facts={"unknown": unknown},
        )
    problems: list[str] = []
    limits: dict[Severity, int] = {}
    for severity, name in LIMITS.items():
        if name not in options:
            continue
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"{name} must be an integer >= 0, got {value!r}")
        else:
            limits[severity] = value
    blocklist: set[str] = set()
    raw_blocklist = options.get("blocklist", [])
    if not isinstance(raw_blocklist, list | tuple) or not all(
        isinstance(item, str) and item for item in raw_blocklist
    ):
        problems.append(f"blocklist must be a list of ids, got {raw_blocklist!r}")
    else:
        blocklist = set(raw_blocklist)
    exceptions: list[_Exception] = []
    raw_exceptions = options.get("exceptions", [])
    if not isinstance(raw_exceptions, list | tuple):
        problems.append(f"exceptions must be a list of {{id, until, reason}}, got {raw_exceptions!r}")
    else:
        for index, entry in enumerate(raw_exceptions):
            parsed = _parse_exception(entry, f"exceptions[{index}]")
            if isinstance(parsed, str):
                problems.append(parsed)
            else:
                exceptions.append(parsed)
    if problems:
        return GateResult(GATE, "error", "invalid-option", "; ".join(problems))
    return _Options(limits, frozenset(blocklist), tuple(sorted(exceptions, key=lambda e: (e.id, e.until))))


def _parse_exception(entry: object, where: str) -> _Exception | str:
    """The exception, or what is wrong with it."""
    if not isinstance(entry, Mapping):
        return f"{where} must be a mapping {{id, until, reason}}, got {entry!r}"
    extra = sorted(str(k) for k in entry if k not in ("id", "until", "reason"))
    if extra:
        return f"{where} has unknown field(s) {', '.join(extra)} (known: id, until, reason)"
    ident, reason, until = entry.get("id"), entry.get("reason"), entry.get("until")
    if not isinstance(ident, str) or not ident:
        return f"{where}.id must be a vulnerability id, got {ident!r}"
    if not isinstance(reason, str) or not reason.strip():
        return f"{where}.reason must say why {ident} is excepted, got {reason!r}"
    problem = f"{where}.until must be an RFC 3339 time with a time zone or a date, got {until!r}"
    if isinstance(until, datetime):
        if until.tzinfo is None or until.utcoffset() is None:
            return problem
        last = as_utc(until)
        return _Exception(ident, rfc3339(last), reason, last=last)
    if isinstance(until, date):
        return _Exception(ident, until.isoformat(), reason, day=until)
    if not isinstance(until, str):
        return problem
    try:
        if _DATE_RE.match(until):
            day = date.fromisoformat(until)
            return _Exception(ident, day.isoformat(), reason, day=day)
        if _RFC3339_RE.match(until):
            last = as_utc(datetime.fromisoformat(until.upper().replace("Z", "+00:00")))
            return _Exception(ident, rfc3339(last), reason, last=last)
    except ValueError:
        pass
    return problem


# --- judging one image ---------------------------------------------------------------------------


@dataclass
class _Image:
    """What the gate found for one component."""

    component: str
    digest: str
    reports: list[dict[str, object]] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    counted: list[Vulnerability] = field(default_factory=list)
    excepted: list[dict[str, object]] = field(default_factory=list)
    expired: list[dict[str, object]] = field(default_factory=list)
    blocklisted: dict[str, list[str]] = field(default_factory=dict)
    """Finding id -> the blocklist entries it matched."""

    def counts(self) -> dict[Severity, int]:
        """Findings of each severity, as the scanners count them: what the limits are compared with."""
        counts: dict[Severity, int] = dict.fromkeys(SEVERITIES, 0)
        for vulnerability in self.counted:
            counts[vulnerability.finding.severity] += vulnerability.findings
        return counts

    def distinct(self) -> dict[Severity, int]:
        """Distinct vulnerabilities (ids, aliases merged) of each severity."""
        counts: dict[Severity, int] = dict.fromkeys(SEVERITIES, 0)
        for vulnerability in self.counted:
            counts[vulnerability.finding.severity] += 1
        return counts

    def ids(self, severity: Severity) -> list[str]:
        return sorted(v.finding.id for v in self.counted if v.finding.severity == severity)


def _read(files: FileSource, image: _Image, directory: str) -> list[Report]:
    reports: list[Report] = []
    for name in sorted(n for n in files.listdir(directory) if n.endswith(".json")):
        path = f"{directory}/{name}"
        data = files.read(path)
        if data is None:  # e.g. a directory named *.json
            continue
        try:
            report = parse_report(data, path)
        except ReportError as exc:
            image.invalid.append(str(exc))
            continue
        image.reports.append(
            {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "format": report.format}
        )
        reports.append(report)
    return reports


def _judge(image: _Image, reports: Sequence[Report], options: _Options, now: datetime) -> None:
    for vulnerability in vulnerabilities(reports):
        finding = vulnerability.finding
        matching = [e for e in options.exceptions if e.id in finding.ids]
        live = [e for e in matching if e.applies(now)]
        if live:
            image.excepted.extend(
                {
                    "component": image.component,
                    "finding": finding.id,
                    "severity": finding.severity,
                    "findings": vulnerability.findings,
                    **e.fact(),
                }
                for e in live
            )
            continue
        image.expired.extend(
            {"component": image.component, "finding": finding.id, **e.fact()} for e in matching
        )
        listed = options.blocklist & (finding.ids | set(finding.related))
        if listed:
            image.blocklisted[finding.id] = sorted(listed)
        image.counted.append(vulnerability)


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:MAX_IDS])
    return shown if len(ids) <= MAX_IDS else f"{shown} and {len(ids) - MAX_IDS} more"


def _count(image: _Image, severity: Severity) -> str:
    """`2 CRITICAL (1 distinct id)`: the findings, as the limits count them, and the distinct ids."""
    distinct = image.distinct()[severity]
    return f"{image.counts()[severity]} {severity} ({distinct} distinct id{'' if distinct == 1 else 's'})"


def _summary(image: _Image) -> str:
    found = ", ".join(_count(image, s) for s, n in image.counts().items() if n)
    return f"{image.component}: {found or 'no findings'}"


def _notes(images: Sequence[_Image]) -> str:
    """What exceptions did (applied, expired), for the end of a message."""
    notes = ""
    excepted = [e for i in images for e in i.excepted]
    if excepted:
        notes += "; excepted: " + ", ".join(
            f"{e['finding']} in {e['component']} (until {e['until']}: {e['reason']})" for e in excepted
        )
    expired = [e for i in images for e in i.expired]
    if expired:
        notes += "; exception no longer applies: " + ", ".join(
            f"{e['id']} for {e['finding']} in {e['component']} (until {e['until']})" for e in expired
        )
    return notes


# --- the gate ------------------------------------------------------------------------------------


class VulnerabilityGate:
    """Thresholds, blocklist and exceptions over the offline scan reports of each component digest."""

    manifest = PluginManifest(
        name=GATE,
        version=_package_version(),
        kinds=("gate",),
        network=False,
        description="vulnerability thresholds over offline scan reports (Trivy JSON, OSV) per image digest",
    )

    def evaluate(self, ctx: GateContext) -> GateResult:
        options = _parse_options(ctx.options)
        if isinstance(options, GateResult):
            return options
        now = as_utc(ctx.now, "ctx.now")
        files = ctx.files
        if files is None:
            return GateResult(GATE, "error", "no-files", "no repository files were handed to the gate")
        images: list[_Image] = []
        missing: list[tuple[str, str, str]] = []
        for component, locked in sorted(ctx.release.components.items()):
            image = _Image(component, locked.digest)
            directory = reports_dir(ctx.mirror, locked.digest)
            reports = _read(files, image, directory)
            if not image.reports and not image.invalid:
                missing.append((component, locked.digest, directory))
                continue
            _judge(image, reports, options, now)
            images.append(image)
        facts = _facts(images)
        invalid = [problem for i in images for problem in i.invalid]
        if invalid:
            facts["invalid"] = invalid
        if missing:
            facts["missing"] = {c: d for c, d, _ in missing}
        unread = invalid + [f"no scan report for {c} ({d}): no {where}/*.json" for c, d, where in missing]
        also = "".join(f"; {text}" for text in unread)
        violations, reason = _violations(images, options)
        if violations:
            return GateResult(
                GATE, "fail", reason, "; ".join(violations) + _notes(images) + also, facts=facts
            )
        if invalid:
            return GateResult(GATE, "error", "invalid-report", "; ".join(unread), facts=facts)
        if missing:
            return GateResult(GATE, "pending", "no-scan-report", "; ".join(unread), facts=facts)
        summary = "; ".join(_summary(i) for i in images) or "no components"
        return GateResult(
            GATE,
            "pass",
            "within-thresholds",
            f"within thresholds ({options.describe_limits()}): {summary}{_notes(images)}",
            facts=facts,
        )


def _violations(images: Sequence[_Image], options: _Options) -> tuple[list[str], str]:
    """Every violation, in order (blocklisted first, then by severity), and the reason code."""
    violations: list[str] = []
    reasons: list[str] = []
    for image in images:
        if image.blocklisted:
            named = [
                ident if listed == [ident] else f"{ident} (listed as {', '.join(listed)})"
                for ident, listed in sorted(image.blocklisted.items())
            ]
            violations.append(f"{image.component}: blocklisted {_ids(named)}")
            reasons.append("blocklisted")
    for severity in SEVERITIES:
        limit = options.limits.get(severity)
        if limit is None:
            continue
        for image in images:
            count = image.counts()[severity]
            if count > limit:
                violations.append(
                    f"{image.component}: {_count(image, severity)} > {LIMITS[severity]} {limit} "
                    f"({_ids(image.ids(severity))})"
                )
                reasons.append(f"too-many-{severity.lower()}")
    return violations, (reasons[0] if reasons else "")


def _facts(images: Sequence[_Image]) -> dict[str, object]:
    facts: dict[str, object] = {
        "reports": {i.component: i.reports for i in images if i.reports},
        "counts": {i.component: dict(i.counts()) for i in images if i.reports},
        "distinctIds": {i.component: dict(i.distinct()) for i in images if i.reports},
        "excepted": sorted(
            (e for i in images for e in i.excepted), key=lambda e: (str(e["component"]), str(e["finding"]))
        ),
    }
    blocklisted = [
        {"component": i.component, "id": ident, "listed": listed}
        for i in images
        for ident, listed in sorted(i.blocklisted.items())
    ]
    if blocklisted:
        facts["blocklisted"] = blocklisted
    expired = [e for i in images for e in i.expired]
    if expired:
        facts["expired"] = expired
    return facts


vulnerability = VulnerabilityGate()
"""The entry point object (`stella.gates`: `vulnerability`)."""
