"""Which records, and which environments, each finding of `audit.verify` concerns.

A finding names a file; the record it concerns is the one that file belongs to (a statement or its
bundle), or every record that uses it (inputs, artifacts, a release lock); a pointer file concerns its
environment, a target's pointer (`targets/<env>/<target>/`) that target. The result tells each page
which findings to show and which records to highlight.

Must not: judge the evidence (that is `audit.verify`'s job) or read the branch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..ledger import target_chain
from .values import href, short

if TYPE_CHECKING:
    from ..audit import Finding
    from .branch import Entry

_EVIDENCE_FILE = re.compile(r"^evidence/([0-9a-f]{64})(?:\.sigstore)?\.json$")
_INPUTS_FILE = re.compile(r"^inputs/([0-9a-f]{64})\.json$")
_ARTIFACT_FILE = re.compile(r"^artifacts/([0-9a-f]{64})/")
_RELEASE_FILE = re.compile(r"^releases/(.+)\.json$")
_POINTER_FILE = re.compile(r"^environments/([^/]+)/")
_TARGET_FILE = re.compile(r"^targets/([^/]+)/([^/]+)/")


@dataclass
class Attached:
    """Findings by record and by environment (indexes into the report's list of findings)."""

    by_record: dict[str, list[int]] = field(default_factory=dict)
    by_environment: dict[str, list[int]] = field(default_factory=dict)
    by_target: dict[str, list[int]] = field(default_factory=dict)
    """target chain (`ledger.target_chain`) -> the findings on that target's pointer."""
    targets: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    """finding index -> (environment, record hex) of every record it concerns."""


def attach(findings: list[Finding], entries: Mapping[str, Entry]) -> Attached:
    """Which records (and environments) each finding concerns, from the file it names."""
    attached = Attached()
    users: dict[tuple[str, str], list[str]] = {}
    if findings:
        for entry in entries.values():
            keys = [("inputs", entry.inputs or ""), ("release", entry.release or "")]
            keys += [("artifact", sha) for sha in entry.artifacts]
            for key in keys:
                users.setdefault(key, []).append(entry.hex)
    for i, finding in enumerate(findings):
        hexes: list[str] = []
        if match := _EVIDENCE_FILE.match(finding.file):
            hexes = [match.group(1)] if match.group(1) in entries else []
        elif match := _INPUTS_FILE.match(finding.file):
            hexes = users.get(("inputs", match.group(1)), [])
        elif match := _ARTIFACT_FILE.match(finding.file):
            hexes = users.get(("artifact", match.group(1)), [])
        elif match := _RELEASE_FILE.match(finding.file):
            hexes = users.get(("release", match.group(1)), [])
        elif match := _POINTER_FILE.match(finding.file):
            attached.by_environment.setdefault(match.group(1), []).append(i)
        elif match := _TARGET_FILE.match(finding.file):
            attached.by_target.setdefault(target_chain(match.group(1), match.group(2)), []).append(i)
        for hex_id in sorted(hexes):
            attached.by_record.setdefault(hex_id, []).append(i)
            attached.targets.setdefault(i, []).append((entries[hex_id].environment, hex_id))
    return attached


def finding_view(finding: Finding, targets: list[tuple[str, str]], here: str | None) -> dict[str, Any]:
    """A finding as a page shows it, linked to the records it concerns (from the page of `here`)."""
    return {
        "file": finding.file,
        "message": finding.message,
        "commit": finding.commit,
        "records": [
            {"href": href(env, hex_id, here), "label": short(f"sha256:{hex_id}"), "environment": env}
            for env, hex_id in targets
        ],
    }
