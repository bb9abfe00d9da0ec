"""Evidence JSON as display values, and the links between the report's pages.

Every value read from the branch passes through `text()` and friends: they turn JSON of any shape into
plain strings, lists and dicts, never into markup (the templates escape what they show). Page names
and anchors are built here only from checked names or hex ids, never from raw evidence text.

Must not: read the branch, render HTML, or raise on unexpected JSON (odd values become text).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
EVIDENCE_ID = re.compile(r"^sha256:([0-9a-f]{64})$")


def page_name(environment: str) -> str:
    """The file name of an environment's page: readable for valid names, hashed for anything else."""
    if _SAFE_NAME.match(environment):
        return f"env-{environment}.html"
    return f"env--{hashlib.sha256(environment.encode('utf-8', 'replace')).hexdigest()[:16]}.html"


def target_anchor(target: str) -> str:
    """The anchor of a target's section on its environment's page (hashed for unchecked names)."""
    if _SAFE_NAME.match(target):
        return f"t-{target}"
    return f"t--{hashlib.sha256(target.encode('utf-8', 'replace')).hexdigest()[:16]}"


def href(env: str, hex_id: str, here: str | None) -> str:
    """A link to record `hex_id` of `env`, from the page of `here` (None: from the index)."""
    anchor = f"#r-{hex_id}"
    return anchor if env == here else page_name(env) + anchor


def short(evidence_id: str) -> str:
    """An evidence id cut to a readable label (`sha256:` and 12 hex digits)."""
    return evidence_id[: len("sha256:") + 12] + "…" if evidence_id.startswith("sha256:") else evidence_id


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def text(value: Any) -> str:
    """A JSON value as display text ('' for null); never markup (the template escapes it)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def one_component(name: str) -> bool:
    """Whether a name from the evidence can be one path component (it is read as a file name)."""
    return bool(name) and "/" not in name and name not in (".", "..")


def hex_of(evidence_id: Any) -> str | None:
    """The hex id of an evidence id (`sha256:<hex>`), or None when there is none."""
    if not isinstance(evidence_id, str):
        return None
    match = EVIDENCE_ID.match(evidence_id)
    return match.group(1) if match else evidence_id.removeprefix("sha256:") or None
