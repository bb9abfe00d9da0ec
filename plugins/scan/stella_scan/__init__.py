"""Stella's vulnerability gate: thresholds over offline scan reports of each image digest.

One plugin, an entry point of group `stella.gates`: `vulnerability` (`stella_scan.gate:vulnerability`).
It reads the reports for each component digest from `<mirror>/reports/sha256-<hex>/*.json` in the
repository (Trivy JSON or OSV, told apart by content; `stella_scan.reports` parses them, purely) and
judges them against the environment's `maxCritical` ... `maxUnknown`, `blocklist` and `exceptions`.
It needs no network, and never prints or exits.
"""

from __future__ import annotations

from .gate import GATE, LIMITS, OPTIONS, VulnerabilityGate, reports_dir, vulnerability
from .reports import (
    SEVERITIES,
    Finding,
    Report,
    ReportError,
    ReportFormat,
    Severity,
    Vulnerability,
    count_by_severity,
    deduplicate,
    parse_report,
    vulnerabilities,
)

__version__ = VulnerabilityGate.manifest.version

__all__ = [
    "GATE",
    "LIMITS",
    "OPTIONS",
    "SEVERITIES",
    "Finding",
    "Report",
    "ReportError",
    "ReportFormat",
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
