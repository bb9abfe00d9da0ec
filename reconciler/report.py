"""`stella audit report`: a static HTML report of the evidence branch, for people who do not read JSON.

Reads the evidence branch at the commit `audit.verify()` checked, through pygit2 (never a work tree),
and writes into one directory:
- `index.html`: the verification summary, every finding (each linked to the records it concerns), and
  each environment with its current release (from `environments/<env>/stella.version.json`);
- `env-<name>.html`, one per environment: its current release and a timeline of its records, newest
  first (chain order), each with who (requester, approvers), what (release, component digests), why
  (result, every gate with status, reason code and message), how (artifacts, inputs, signing key hint),
  when (requestedAt, decidedAt, and startedAt/completedAt for deployments), links to the previous and
  next records of its chain, and the findings that concern it, highlighted.

Must not: run a server or load anything from outside the page (no script, font, stylesheet or image;
CSS is inline and a Content-Security-Policy forbids the rest); trust evidence text (Jinja2 autoescapes
every value; nothing read from the branch becomes markup, a CSS class, a URL or a file name unchecked);
depend on the clock, locale or machine (the same branch and findings give the same bytes); hold every
record in memory (a first pass keeps a small index entry per record, a second reads each record again
only while its environment's page is streamed to disk); write to the repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from .audit import Finding, Report
from .repo import GitTree, Repo

INDEX = "index.html"
UNKNOWN_ENVIRONMENT = "(unknown)"
"""Where records whose statement names no environment (or cannot be read) are listed."""

_RECORD_NAME = re.compile(r"^([0-9a-f]{64})\.json$")
_EVIDENCE_FILE = re.compile(r"^evidence/([0-9a-f]{64})(?:\.sigstore)?\.json$")
_INPUTS_FILE = re.compile(r"^inputs/([0-9a-f]{64})\.json$")
_ARTIFACT_FILE = re.compile(r"^artifacts/([0-9a-f]{64})/")
_RELEASE_FILE = re.compile(r"^releases/(.+)\.json$")
_POINTER_FILE = re.compile(r"^environments/([^/]+)/")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_EVIDENCE_ID = re.compile(r"^sha256:([0-9a-f]{64})$")

_STATUSES = ("pass", "fail", "pending", "error")
_RESULTS = ("allow", "deny")
_TYPES = ("release_decision", "deployment", "rollback")


def page_name(environment: str) -> str:
    """The file name of an environment's page: readable for valid names, hashed for anything else."""
    if _SAFE_NAME.match(environment):
        return f"env-{environment}.html"
    return f"env--{hashlib.sha256(environment.encode('utf-8', 'replace')).hexdigest()[:16]}.html"


def write_report(repo: Repo, ref: str, out: Path, report: Report) -> list[Path]:
    """Write the report of `ref` (at `report.head`, the commit verified) into `out`.

    Returns the files written: `index.html` first, then one page per environment, sorted by name.
    `out` is created when missing; files of an earlier report there are replaced.
    """
    out.mkdir(parents=True, exist_ok=True)
    head = report.head
    tree = repo.tree(head) if head else None
    entries = _index(tree) if tree else {}
    environments = sorted(
        {e.environment for e in entries.values()} | set(tree.listdir("environments") if tree else [])
    )
    attached = _attach(report.findings, entries)
    children: dict[str, list[str]] = {}
    for entry in entries.values():
        if entry.previous is not None:
            children.setdefault(entry.previous, []).append(entry.hex)
    timelines = _timelines(entries)
    pointers = {env: _pointer(tree, env, entries) for env in environments} if tree else {}
    templates = _templates()
    written: list[Path] = []

    summary = {
        "ref": ref,
        "head": head,
        "ok": report.ok,
        "records": report.records,
        "bundles": report.bundles,
        "commits": report.commits,
        "findings": [
            _finding_view(f, attached.targets.get(i, []), None) for i, f in enumerate(report.findings)
        ],
    }
    rows = [
        {
            "name": env,
            "page": page_name(env),
            "records": len(timelines.get(env, [])),
            "flagged": sum(1 for h in timelines.get(env, []) if h in attached.by_record),
            "findings": len(attached.by_environment.get(env, [])),
            "pointer": pointers.get(env),
        }
        for env in environments
    ]
    index_path = out / INDEX
    _dump(templates.get_template("index.html"), {"summary": summary, "environments": rows}, index_path)
    written.append(index_path)

    for env in environments:
        hexes = timelines.get(env, [])
        env_findings = [
            _finding_view(report.findings[i], attached.targets.get(i, []), env)
            for i in attached.by_environment.get(env, [])
        ]
        context = {
            "summary": summary,
            "environment": {
                "name": env,
                "records": len(hexes),
                "flagged": sum(1 for h in hexes if h in attached.by_record),
                "findings": env_findings,
                "pointer": pointers.get(env),
            },
            "records": _records(tree, hexes, entries, children, attached, report.findings, env)
            if tree
            else iter(()),
        }
        path = out / page_name(env)
        _dump(templates.get_template("environment.html"), context, path)
        written.append(path)
    return written


# --- reading the branch --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """What the report must know of a record before rendering any page (a few short strings)."""

    hex: str
    environment: str
    previous: str | None
    decided_at: str
    inputs: str | None
    artifacts: tuple[str, ...]
    release: str | None


def _index(tree: GitTree) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    for name in tree.listdir("evidence"):
        match = _RECORD_NAME.match(name)
        if not match:
            continue  # bundles, and files audit.verify already reports as unexpected
        hex_id = match.group(1)
        predicate = _predicate(tree.read(f"evidence/{name}"))
        if predicate.get("type") == "policy_ratification":
            continue  # the policy chain is not an environment's timeline (`stella policy status`)
        env = _text(predicate.get("environment")) or UNKNOWN_ENVIRONMENT
        previous = _hex_of(predicate.get("previous"))
        inputs = _dict(predicate.get("inputs")).get("sha256")
        entries[hex_id] = _Entry(
            hex=hex_id,
            environment=env,
            previous=previous,
            decided_at=_text(predicate.get("decidedAt") or predicate.get("completedAt")),
            inputs=inputs if isinstance(inputs, str) else None,
            artifacts=tuple(_text(a.get("sha256")) for a in _dicts(predicate.get("artifacts"))),
            release=_text(_dict(predicate.get("release")).get("name")) or None,
        )
    return entries


def _predicate(raw: bytes | None) -> dict[str, Any]:
    try:
        statement = json.loads(raw or b"")
    except ValueError:
        return {}
    return _dict(statement.get("predicate")) if isinstance(statement, dict) else {}


def _timelines(entries: Mapping[str, _Entry]) -> dict[str, list[str]]:
    """Each environment's record ids, newest first: by position in the chain, then time, then id."""
    depth: dict[str, int] = {}
    for start in entries:
        path: list[str] = []
        seen: set[str] = set()
        current: str | None = start
        while current is not None and current not in depth and current not in seen:
            path.append(current)
            seen.add(current)
            entry = entries[current]
            previous = entry.previous
            if (
                previous is None
                or previous not in entries
                or entries[previous].environment != entry.environment
            ):
                current = None
            else:
                current = previous
        base = depth[current] + 1 if current is not None and current in depth else 0
        for offset, hex_id in enumerate(reversed(path)):
            depth[hex_id] = base + offset
    timelines: dict[str, list[str]] = {}
    for entry in entries.values():
        timelines.setdefault(entry.environment, []).append(entry.hex)
    for hexes in timelines.values():
        hexes.sort(key=lambda h: (depth[h], entries[h].decided_at, h), reverse=True)
    return timelines


def _pointer(tree: GitTree, env: str, entries: Mapping[str, _Entry]) -> dict[str, Any] | None:
    """`environments/<env>/stella.version.json` as the page shows it (None: no pointer)."""
    raw = tree.read(f"environments/{env}/stella.version.json")
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {"readable": False}
    current = _dict(data.get("current"))
    return {
        "readable": True,
        "head": _link(_text(data.get("head")), entries, env),
        "release": _text(current.get("release")),
        "release_id": _text(current.get("releaseId")),
        "evidence": _link(_text(current.get("evidence")), entries, env) if current else None,
        "decided_at": _text(current.get("decidedAt")),
        "artifacts": sorted((_text(k), _text(v)) for k, v in _dict(current.get("artifacts")).items()),
        "nothing": not current,
    }


# --- findings ------------------------------------------------------------------------------------


@dataclass
class _Attached:
    by_record: dict[str, list[int]] = field(default_factory=dict)
    by_environment: dict[str, list[int]] = field(default_factory=dict)
    targets: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    """finding index -> (environment, record hex) of every record it concerns."""


def _attach(findings: list[Finding], entries: Mapping[str, _Entry]) -> _Attached:
    """Which records (and environments) each finding concerns, from the file it names."""
    attached = _Attached()
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
        for hex_id in sorted(hexes):
            attached.by_record.setdefault(hex_id, []).append(i)
            attached.targets.setdefault(i, []).append((entries[hex_id].environment, hex_id))
    return attached


def _finding_view(finding: Finding, targets: list[tuple[str, str]], here: str | None) -> dict[str, Any]:
    return {
        "file": finding.file,
        "message": finding.message,
        "commit": finding.commit,
        "records": [
            {"href": _href(env, hex_id, here), "label": _short(f"sha256:{hex_id}"), "environment": env}
            for env, hex_id in targets
        ],
    }


# --- one record, as its page shows it ------------------------------------------------------------


def _records(
    tree: GitTree,
    hexes: list[str],
    entries: Mapping[str, _Entry],
    children: Mapping[str, list[str]],
    attached: _Attached,
    findings: list[Finding],
    env: str,
) -> Iterator[dict[str, Any]]:
    """The records of one page, read one at a time (the template consumes them as they come)."""
    for position, hex_id in enumerate(hexes, start=1):
        raw = tree.read(f"evidence/{hex_id}.json")
        statement: Any = None
        with contextlib.suppress(ValueError):
            statement = json.loads(raw or b"")
        del raw
        view = _record_view(hex_id, statement if isinstance(statement, dict) else {}, env)
        view["position"] = position
        view["hint"] = _key_hint(tree.read(f"evidence/{hex_id}.sigstore.json"))
        previous = entries[hex_id].previous
        if previous is None:
            view["previous"] = None
        elif previous in entries:
            view["previous"] = {
                "href": _href(entries[previous].environment, previous, env),
                "label": _short(f"sha256:{previous}"),
                "environment": entries[previous].environment,
            }
        else:
            view["previous"] = {"href": None, "label": _short(f"sha256:{previous}"), "environment": None}
        view["next"] = [
            {"href": _href(entries[h].environment, h, env), "label": _short(f"sha256:{h}")}
            for h in sorted(children.get(hex_id, []))
        ]
        view["findings"] = [
            _finding_view(findings[i], attached.targets.get(i, []), env)
            for i in attached.by_record.get(hex_id, [])
        ]
        yield view


def _record_view(hex_id: str, statement: dict[str, Any], env: str) -> dict[str, Any]:
    p = _dict(statement.get("predicate"))
    record_type = _text(p.get("type")) or "unknown"
    decision = _dict(p.get("decision"))
    result = _text(decision.get("result") or p.get("result")) or "unknown"
    release = _dict(p.get("release"))
    promotion = _dict(p.get("promotion"))
    actors = _dict(p.get("actors"))
    generator = _dict(p.get("generator"))
    requester = _dict(actors.get("requester")) if "requester" in actors else None
    return {
        "hex": hex_id,
        "id": f"sha256:{hex_id}",
        "readable": bool(p),
        "type": record_type,
        "type_class": record_type if record_type in _TYPES else "other",
        "result": result,
        "result_class": result if result in _RESULTS else "other",
        "tenant": _text(p.get("tenant")),
        "generator": " ".join(
            x for x in (_text(generator.get("name")), _text(generator.get("version"))) if x
        ),
        "predicate_type": _text(statement.get("predicateType")),
        "environment": env,
        "target": _text(p.get("target")),
        "promotion": {
            "id": _text(promotion.get("id")),
            "reason": _text(promotion.get("reason")),
            "commit": _text(promotion.get("commit")),
        },
        "requester": _actor(requester, "requester") if requester is not None else None,
        "approvers": [_actor(a, "approver") for a in _dicts(actors.get("approvers"))],
        "release": {
            "name": _text(release.get("name")),
            "id": _text(release.get("id")),
            "components": sorted(
                (
                    {
                        "name": _text(name),
                        "image": _text(_dict(c).get("image")),
                        "tag": _text(_dict(c).get("tag")),
                        "digest": _text(_dict(c).get("digest")),
                    }
                    for name, c in _dict(release.get("components")).items()
                ),
                key=lambda c: c["name"],
            ),
        },
        "gates": [_gate(g) for g in _dicts(decision.get("gates"))],
        "artifacts": [
            {"name": _text(a.get("name")), "sha256": _text(a.get("sha256"))}
            for a in _dicts(p.get("artifacts"))
        ],
        "inputs": _text(_dict(p.get("inputs")).get("sha256")),
        "times": [
            (label, _text(p.get(key)))
            for label, key in (
                ("requested", "requestedAt"),
                ("decided", "decidedAt"),
                ("started", "startedAt"),
                ("completed", "completedAt"),
            )
            if key in p
        ],
    }


def _actor(actor: dict[str, Any], role: str) -> dict[str, Any]:
    verified = actor.get("verified") is True
    return {
        "role": role,
        "identity": _text(actor.get("identity")),
        "verified": verified,
        "decision": _text(actor.get("decision")),
        "time": _text(actor.get("time")),
        "commit": _text(actor.get("commit")),
        "key": _text(actor.get("key")),
        "reason": _text(actor.get("reason")),
    }


def _gate(gate: dict[str, Any]) -> dict[str, Any]:
    status = _text(gate.get("status"))
    return {
        "gate": _text(gate.get("gate")),
        "status": status,
        "status_class": status if status in _STATUSES else "other",
        "reason": _text(gate.get("reason")),
        "message": _text(gate.get("message")),
        "retry_at": _text(gate.get("retryAt")),
        "facts": [
            (_text(k), v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False))
            for k, v in sorted(_dict(gate.get("facts")).items())
        ],
    }


def _key_hint(raw: bytes | None) -> dict[str, str]:
    """How the record was signed, from its bundle's verification material (not verified here)."""
    if raw is None:
        return {"kind": "missing", "value": ""}
    try:
        bundle = json.loads(raw)
    except ValueError:
        return {"kind": "unreadable", "value": ""}
    material = _dict(_dict(bundle).get("verificationMaterial"))
    if "publicKey" in material:
        return {"kind": "key", "value": _text(_dict(material["publicKey"]).get("hint"))}
    if "certificate" in material or "x509CertificateChain" in material:
        return {"kind": "certificate", "value": "keyless (certificate in the bundle)"}
    return {"kind": "unknown", "value": ""}


# --- helpers -------------------------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _text(value: Any) -> str:
    """A JSON value as display text ('' for null); never markup (the template escapes it)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _hex_of(evidence_id: Any) -> str | None:
    if not isinstance(evidence_id, str):
        return None
    match = _EVIDENCE_ID.match(evidence_id)
    return match.group(1) if match else evidence_id.removeprefix("sha256:") or None


def _short(evidence_id: str) -> str:
    return evidence_id[: len("sha256:") + 12] + "…" if evidence_id.startswith("sha256:") else evidence_id


def _href(env: str, hex_id: str, here: str | None) -> str:
    anchor = f"#r-{hex_id}"
    return anchor if env == here else page_name(env) + anchor


def _link(evidence_id: str, entries: Mapping[str, _Entry], here: str) -> dict[str, Any]:
    match = _EVIDENCE_ID.match(evidence_id)
    if match and match.group(1) in entries:
        hex_id = match.group(1)
        return {"id": evidence_id, "href": _href(entries[hex_id].environment, hex_id, here)}
    return {"id": evidence_id, "href": None}


def _dump(template: jinja2.Template, context: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for chunk in template.generate(context):
            fh.write(chunk)
    os.replace(tmp, path)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.DictLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals["css"] = markupsafe.Markup(_CSS)  # our constant, not evidence: must not be escaped
    return env


_CSS = """
:root { --fg: #1d232b; --muted: #5b6673; --line: #d5dbe2; --bg: #f6f8fa; --ok: #16794a; --bad: #b42318;
  --warn: #9a6700; --flag-bg: #fff1f0; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 "Segoe UI", "Helvetica Neue", Arial, "Liberation Sans", "DejaVu Sans",
  sans-serif; color: var(--fg); background: #fff; }
header.top { background: #1d232b; color: #fff; padding: 14px 28px; }
header.top h1 { margin: 0; font-size: 20px; }
header.top p { margin: 2px 0 0; color: #c9d1d9; font-size: 12px; }
header.top a { color: #9ecbff; }
main { padding: 18px 28px 40px; max-width: 1220px; }
h2 { font-size: 17px; margin: 22px 0 10px; }
h3 { font-size: 15px; margin: 0; }
h4 { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted);
  margin: 12px 0 4px; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px;
  word-break: break-all; }
table { border-collapse: collapse; width: 100%; margin: 2px 0 6px; }
th, td { text-align: left; vertical-align: top; padding: 4px 8px; border-bottom: 1px solid var(--line); }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: var(--bg); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
  border: 1px solid currentColor; }
.verdict-ok, .result-allow .result, .status-pass .gate-status, .verified-yes { color: var(--ok); }
.verdict-bad, .result-deny .result, .status-fail .gate-status,
.status-error .gate-status { color: var(--bad); }
.status-pending .gate-status, .verified-no { color: var(--warn); }
.findings-summary { border: 2px solid var(--bad); background: var(--flag-bg); border-radius: 6px;
  padding: 10px 16px; }
.findings-summary h2 { color: var(--bad); margin-top: 0; }
.findings { margin: 6px 0; padding-left: 20px; }
.finding { color: var(--bad); margin: 2px 0; }
.finding .finding-message { color: var(--fg); }
.verified-ok-box { border: 2px solid var(--ok); border-radius: 6px; padding: 10px 16px; color: var(--ok);
  font-weight: 600; }
.current { border: 1px solid var(--line); background: var(--bg); border-radius: 6px; padding: 10px 16px; }
.current dl, .facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 4px 0; }
dt { color: var(--muted); }
dd { margin: 0; }
ol.timeline { list-style: none; margin: 0; padding: 0 0 0 18px; border-left: 3px solid var(--line); }
li.record { position: relative; margin: 0 0 18px; border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 16px; background: #fff; }
li.record::before { content: ""; position: absolute; left: -30px; top: 12px; width: 17px; height: 17px;
  border-radius: 50%; background: var(--muted); border: 3px solid #fff; }
li.record.flagged::before { left: -31px; }
li.record.result-allow::before { background: var(--ok); }
li.record.result-deny::before { background: var(--bad); }
li.record.flagged { border: 2px solid var(--bad); background: var(--flag-bg); }
li.record.flagged::before { background: var(--bad); }
nav.chain .sep { margin: 0 6px; }
.record-findings { border-left: 4px solid var(--bad); background: #fff; padding: 6px 10px; margin: 8px 0; }
.record-findings strong { color: var(--bad); }
.record-head { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: baseline; }
.record-head .evidence-id { color: var(--muted); }
nav.chain { font-size: 12px; color: var(--muted); margin: 4px 0; }
nav.chain a { margin-right: 10px; }
.grid { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 0 24px; }
td, dd, p { overflow-wrap: break-word; }
.promotion-reason { white-space: pre-wrap; background: var(--bg); padding: 4px 8px; border-radius: 4px;
  margin: 2px 0 6px; }
.muted { color: var(--muted); }
footer { color: var(--muted); font-size: 12px; padding: 0 28px 24px; }
@media print { li.record { break-inside: avoid; } }
"""

_TEMPLATES: dict[str, str] = {
    "base.html": """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %}</title>
<style>{{ css }}</style>
</head>
<body>
<header class="top">
<h1>{{ self.title() }}</h1>
<p>Evidence ref <code>{{ summary.ref }}</code>
{% if summary.head %} at commit <code id="head">{{ summary.head }}</code>{% endif %}
 · <a href="index.html">summary</a></p>
</header>
<main>
{% block main %}{% endblock %}
</main>
<footer>Written by <code>stella audit report</code> from the evidence branch alone: no server, no
external assets. Verify the evidence itself with <code>stella audit verify</code>.</footer>
</body>
</html>
""",
    "macros.html": """{% macro finding_items(findings) %}
{% for f in findings %}
<li class="finding" data-file="{{ f.file }}"><code class="finding-file">{{ f.file }}</code>
{%- if f.commit %} <span class="muted">(commit <code>{{ f.commit[:12] }}</code>)</span>{% endif -%}
: <span class="finding-message">{{ f.message }}</span>
{% for r in f.records %}
 <a class="finding-record" href="{{ r.href }}">{{ r.environment }} {{ r.label }}</a>
{% endfor %}
</li>
{% endfor %}
{% endmacro %}
{% macro evidence_link(link) %}
{% if link.href %}<a class="mono" href="{{ link.href }}">{{ link.id }}</a>
{% else %}<code>{{ link.id }}</code>
{% endif %}
{% endmacro %}
{% macro current(pointer) %}
<section class="current" id="current">
<h4>Current release</h4>
{% if pointer is none %}
<p class="muted">No pointer (<code>stella.version.json</code>) on the branch: nothing was allowed here.</p>
{% elif not pointer.readable %}
<p class="finding">The pointer file is not readable JSON.</p>
{% else %}
<dl>
<dt>release</dt>
{% if pointer.nothing %}
<dd class="current-release"><span class="muted">none allowed yet</span></dd>
{% else %}
<dd class="current-release"><strong>{{ pointer.release }}</strong></dd>
<dt>release id</dt><dd><code class="current-release-id">{{ pointer.release_id }}</code></dd>
<dt>allowed by</dt><dd class="current-evidence">{{ evidence_link(pointer.evidence) }}</dd>
<dt>decided at</dt><dd>{{ pointer.decided_at }}</dd>
{% for name, sha in pointer.artifacts %}
<dt>{{ name }}</dt><dd><code>sha256:{{ sha }}</code></dd>
{% endfor %}
{% endif %}
<dt>chain head</dt><dd class="chain-head">{{ evidence_link(pointer.head) }}</dd>
</dl>
{% endif %}
</section>
{% endmacro %}
""",
    "index.html": """{% extends "base.html" %}
{% from "macros.html" import finding_items %}
{% block title %}Stella evidence report{% endblock %}
{% block main %}
<section id="verification">
<h2>Verification</h2>
<p>
{% if summary.ok %}
<span class="badge verdict-ok" id="verdict">verified: no findings</span>
{% else %}
<span class="badge verdict-bad" id="verdict">{{ summary.findings|length }} finding(s)</span>
{% endif %}
 {{ summary.records }} records, {{ summary.bundles }} bundles, {{ summary.commits }} commits checked by
 <code>stella audit verify</code>.</p>
</section>
{% if summary.findings %}
<section id="findings" class="findings-summary">
<h2>Findings: the evidence branch does not verify</h2>
<ul class="findings">
{{ finding_items(summary.findings) }}</ul>
</section>
{% else %}
<p class="verified-ok-box" id="no-findings">
Every file hash, signature, chain link and the branch history verified.</p>
{% endif %}
<section id="environments">
<h2>Environments</h2>
<table>
<thead><tr><th>environment</th><th>current release</th><th>release id</th><th>records</th>
<th>flagged records</th></tr></thead>
<tbody>
{% for env in environments %}
{% set p = env.pointer %}
{% set running = p and p.readable and not p.nothing %}
<tr class="environment-row{% if env.flagged or env.findings %} flagged{% endif %}"
 data-environment="{{ env.name }}">
<td><a href="{{ env.page }}">{{ env.name }}</a></td>
<td class="current-release">
{% if running %}{{ p.release }}{% else %}<span class="muted">none</span>{% endif %}</td>
<td>{% if running %}<code>{{ p.release_id }}</code>{% endif %}</td>
<td class="record-count">{{ env.records }}</td>
<td class="flagged-count">{{ env.flagged }}
{% if env.findings %} (+{{ env.findings }} on the pointer){% endif %}</td>
</tr>
{% else %}
<tr><td colspan="5" class="muted">No environment has records.</td></tr>
{% endfor %}
</tbody>
</table>
</section>
{% endblock %}
""",
    "environment.html": """{% extends "base.html" %}
{% from "macros.html" import finding_items, evidence_link, current %}
{% block title %}Environment {{ environment.name }}{% endblock %}
{% block main %}
<section class="environment" id="environment" data-environment="{{ environment.name }}">
{% if summary.findings %}
<section id="findings" class="findings-summary">
<h2>{{ summary.findings|length }} finding(s) on this branch</h2>
<p>{{ environment.flagged }} of this environment's records are affected (highlighted below)
{%- if environment.findings %}, and its pointer{% endif %}.
 All findings: <a href="index.html#findings">summary</a>.</p>
{% if environment.findings %}
<ul class="findings environment-findings">
{{ finding_items(environment.findings) }}</ul>
{% endif %}
</section>
{% endif %}
{{ current(environment.pointer) }}
<h2>Timeline <span class="muted">({{ environment.records }} records, newest first)</span></h2>
<ol class="timeline">
{% for r in records %}
<li class="record result-{{ r.result_class }} type-{{ r.type_class }}{% if r.findings %} flagged{% endif %}"
 id="r-{{ r.hex }}" data-evidence="{{ r.id }}" data-position="{{ r.position }}">
<div class="record-head">
<h3><span class="record-type">{{ r.type }}</span> <span class="badge result">{{ r.result }}</span>
 <span class="record-release">{{ r.release.name }}</span></h3>
<span class="record-promotion">{{ r.promotion.id }}</span>
<span class="record-decided-at">
{%- for label, value in r.times if label == "decided" %}{{ value }}{% endfor -%}
</span>
<code class="evidence-id">{{ r.id }}</code>
</div>
{% if r.findings %}
<div class="record-findings"><strong>Tampering findings on this record</strong>
<ul class="findings">
{{ finding_items(r.findings) }}</ul>
</div>
{% endif %}
{% if not r.readable %}
<p class="finding">This statement is not a readable Stella evidence statement.</p>
{% endif %}
<nav class="chain">
{% if r.previous is none %}
<span class="chain-previous chain-root">first record of the chain</span>
{% elif r.previous.href %}
previous: <a class="chain-previous" href="{{ r.previous.href }}">{{ r.previous.label }}</a>
{% if r.previous.environment != environment.name %} ({{ r.previous.environment }}){% endif %}
{% else %}
previous: <span class="chain-previous chain-missing">{{ r.previous.label }} (not on the branch)</span>
{% endif %}
{% for n in r.next %}
<span class="sep">·</span>next: <a class="chain-next" href="{{ n.href }}">{{ n.label }}</a>
{% endfor %}
</nav>
<div class="grid">
<div class="who">
<h4>Who</h4>
<table class="actors">
<thead><tr><th>role</th><th>identity</th><th>verified</th><th>commit</th></tr></thead>
<tbody>
{% set actors = ([r.requester] if r.requester else []) + r.approvers %}
{% for a in actors %}
<tr class="actor {{ a.role }}">
<td class="actor-role">{{ a.role }}{% if a.decision %} ({{ a.decision }}){% endif %}</td>
<td class="actor-identity">
{% if a.identity %}{{ a.identity }}{% else %}<span class="muted">unknown</span>{% endif %}
{% if a.key %}<br><code>{{ a.key }}</code>{% endif %}</td>
<td class="actor-verified {{ 'verified-yes' if a.verified else 'verified-no' }}">
{{ "verified" if a.verified else "not verified" }}
{% if a.reason %}<br><span class="muted">{{ a.reason }}</span>{% endif %}</td>
<td class="actor-commit"><code>{{ a.commit }}</code>
{%- if a.time %}<br><span class="actor-time">{{ a.time }}</span>{% endif %}</td>
</tr>
{% endfor %}
{% if not r.approvers %}
<tr class="no-approvers"><td>approvers</td><td colspan="3" class="muted">none recorded</td></tr>
{% endif %}
</tbody>
</table>
</div>
<div class="what">
<h4>What</h4>
<p>release <strong>{{ r.release.name }}</strong> <code class="release-id">{{ r.release.id }}</code></p>
<table class="components">
<thead><tr><th>component</th><th>image</th><th>digest</th></tr></thead>
<tbody>
{% for c in r.release.components %}
<tr class="component"><td>{{ c.name }}</td>
<td>{{ c.image }}{% if c.tag %}<span class="muted">:{{ c.tag }}</span>{% endif %}</td>
<td><code>{{ c.digest }}</code></td></tr>
{% endfor %}
</tbody>
</table>
</div>
</div>
<div class="why">
<h4>Why</h4>
<p>decision <strong class="decision">{{ r.result }}</strong>
{% if r.promotion.id %} on promotion <code>{{ r.promotion.id }}</code>{% endif %}; requested because:</p>
<p class="promotion-reason">
{%- if r.promotion.reason %}{{ r.promotion.reason }}{% else %}<span class="muted">(no reason given)</span>
{%- endif %}</p>
<table class="gates">
<thead><tr><th>gate</th><th>status</th><th>reason</th><th>message</th></tr></thead>
<tbody>
{% for g in r.gates %}
<tr class="gate status-{{ g.status_class }}">
<td class="gate-name">{{ g.gate }}</td>
<td class="gate-status">{{ g.status }}</td>
<td class="gate-reason"><code>{{ g.reason }}</code></td>
<td class="gate-message">{{ g.message }}
{% if g.retry_at %} <span class="muted">(until {{ g.retry_at }})</span>{% endif %}
{% for k, v in g.facts %}<br><span class="muted">{{ k }}:</span> <code>{{ v }}</code>{% endfor %}</td>
</tr>
{% else %}
<tr><td colspan="4" class="muted">no gates recorded</td></tr>
{% endfor %}
</tbody>
</table>
</div>
<div class="grid">
<div class="how">
<h4>How</h4>
<dl class="facts">
{% for a in r.artifacts %}
<dt>{{ a.name }}</dt><dd><code class="artifact">sha256:{{ a.sha256 }}</code></dd>
{% else %}
<dt>artifacts</dt><dd class="muted">none (nothing to deploy)</dd>
{% endfor %}
<dt>inputs</dt><dd><code class="inputs">sha256:{{ r.inputs }}</code></dd>
<dt>signed with</dt>
<dd class="signing">
{% if r.hint.kind == "key" %}key hint <code class="key-hint">{{ r.hint.value }}</code>
{% elif r.hint.kind == "certificate" %}{{ r.hint.value }}
{% else %}<span class="finding">bundle {{ r.hint.kind }}</span>
{% endif %}
</dd>
<dt>generator</dt><dd>{{ r.generator }}{% if r.tenant %} · tenant {{ r.tenant }}{% endif %}</dd>
{% if r.target %}<dt>target</dt><dd>{{ r.target }}</dd>{% endif %}
</dl>
</div>
<div class="when">
<h4>When</h4>
<dl class="facts">
{% for label, value in r.times %}
<dt>{{ label }}</dt>
<dd class="time-{{ label }}">
{%- if value %}{{ value }}{% else %}<span class="muted">unknown</span>{% endif %}</dd>
{% endfor %}
</dl>
</div>
</div>
</li>
{% else %}
<li class="muted">No records in this environment.</li>
{% endfor %}
</ol>
</section>
{% endblock %}
""",
}
