"""`stella audit report`: a static HTML report of the evidence branch, for people who do not read JSON.

Reads the evidence branch at the commit `audit.verify()` checked, through pygit2 (never a work tree),
and writes into one directory:
- `index.html`: the verification summary, every finding (each linked to the records it concerns),
  each environment with its current release (from `environments/<env>/stella.version.json`), and,
  when there are any, the targets of each environment with their state (last deployment result);
- `env-<name>.html`, one per environment: its current release and a timeline of its records, newest
  first (chain order), each with who (requester, approvers), what (release, component digests), why
  (result, every gate with status, reason code and message), how (artifacts, inputs, signing key hint),
  when (requestedAt, decidedAt), links to the previous and next records of its chain, and the findings
  that concern it, highlighted; then a section per target: what its pointer
  (`targets/<env>/<target>/stella.version.json`) says it runs, and its deployment records, newest
  first (result and reason, the decision carried out, release, times and duration, steps, containers).

This package builds the data the pages show (`branch`: the index of records, timelines, pointers;
`findings`: what each finding concerns; `records`: one record's view; `deployments`: targets and
their deployment records); the HTML and CSS are Jinja2 templates in `reconciler/templates/report/`,
rendered by `pages`.

Must not: run a server or load anything from outside the page (no script, font, stylesheet or image;
CSS is inline and a Content-Security-Policy forbids the rest); trust evidence text (Jinja2 autoescapes
every value; nothing read from the branch becomes markup, a CSS class, a URL or a file name unchecked);
depend on the clock, locale or machine (the same branch and findings give the same bytes); hold every
record in memory (a first pass keeps a small index entry per record, a second reads each record again
only while its environment's page is streamed to disk); write to the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .branch import UNKNOWN_ENVIRONMENT, children, pointer, read_index, timelines
from .deployments import target_environments, targets_of, with_records
from .findings import attach, finding_view
from .pages import template_environment, write_page
from .records import read_records
from .values import page_name

if TYPE_CHECKING:
    from ..audit import Report
    from ..repo import Repo

__all__ = ["INDEX", "UNKNOWN_ENVIRONMENT", "page_name", "write_report"]

INDEX = "index.html"


def write_report(repo: Repo, ref: str, out: Path, report: Report) -> list[Path]:
    """Write the report of `ref` (at `report.head`, the commit verified) into `out`.

    Returns the files written: `index.html` first, then one page per environment, sorted by name.
    `out` is created when missing; files of an earlier report there are replaced.
    """
    out.mkdir(parents=True, exist_ok=True)
    head = report.head
    tree = repo.tree(head) if head else None
    entries = read_index(tree) if tree else {}
    environments = sorted(
        {e.environment for e in entries.values()}
        | set(tree.listdir("environments") if tree else [])
        | set(target_environments(tree) if tree else [])
    )
    attached = attach(report.findings, entries)
    following = children(entries)
    ordered = timelines(entries)
    pointers = {env: pointer(tree, env, entries) for env in environments} if tree else {}
    targets = {
        env: targets_of(tree, env, entries, ordered, attached, report.findings, None) for env in environments
    }
    templates = template_environment()
    written: list[Path] = []

    summary = {
        "ref": ref,
        "head": head,
        "ok": report.ok,
        "records": report.records,
        "bundles": report.bundles,
        "commits": report.commits,
        "findings": [
            finding_view(f, attached.targets.get(i, []), None) for i, f in enumerate(report.findings)
        ],
    }
    rows = [
        {
            "name": env,
            "page": page_name(env),
            "records": len(ordered.get(env, [])),
            "flagged": sum(1 for h in ordered.get(env, []) if h in attached.by_record),
            "findings": len(attached.by_environment.get(env, [])),
            "pointer": pointers.get(env),
            "targets": targets[env],
            "targets_flagged": sum(1 for t in targets[env] if t["flagged"] or t["findings"]),
        }
        for env in environments
    ]
    index_path = out / INDEX
    context = {"summary": summary, "environments": rows, "deployments": any(targets.values())}
    write_page(templates.get_template("index.html.j2"), context, index_path)
    written.append(index_path)

    for env in environments:
        hexes = ordered.get(env, [])
        here = targets_of(tree, env, entries, ordered, attached, report.findings, env)
        flagged = sum(1 for h in hexes if h in attached.by_record) + sum(t["flagged"] for t in here)
        env_findings = [
            finding_view(report.findings[i], attached.targets.get(i, []), env)
            for i in attached.by_environment.get(env, [])
        ]
        context = {
            "summary": summary,
            "environment": {
                "name": env,
                "records": len(hexes),
                "flagged": flagged,
                "findings": env_findings,
                "pointer": pointers.get(env),
            },
            "records": read_records(tree, hexes, entries, following, attached, report.findings, env)
            if tree
            else iter(()),
            "targets": with_records(tree, env, here, entries, ordered, following, attached, report.findings)
            if tree
            else here,
            "deployments": bool(here),
        }
        path = out / page_name(env)
        write_page(templates.get_template("environment.html.j2"), context, path)
        written.append(path)
    return written
