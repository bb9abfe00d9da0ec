"""An environment's targets as the report shows them: each target's deployment records and pointer.

A target is on its environment's page when it has deployment records (`type: deployment` or
`rollback`, chained per target: `ledger.target_chain`) or a pointer,
`targets/<env>/<target>/stella.version.json` (the mirror of the agent's sticker). `targets_of()` lists
them with their state (the newest record's result) and what the pointer says the target runs now; the
records themselves are read one at a time while the page is written (`records.read_records` with
`deployment_view`), each turned into plain display values: result and reason, the decision it carried
out (linked), the release, its times and duration, every step (stage, command, exit code, duration,
output) and the containers seen.

Must not: verify anything (`audit.verify` does), keep records once yielded, produce markup (the
templates escape every value), or read a path built from an unchecked name (a target or environment
name that is not one path component names no pointer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from ..ledger import DEPLOYMENT_TYPES, TARGETS, target_chain, target_pointer_path
from .branch import Entry, link
from .findings import Attached, finding_view
from .records import read_records
from .values import as_dict, dicts, href, one_component, page_name, target_anchor, text

if TYPE_CHECKING:
    from ..audit import Finding
    from ..protocols import FileSource
    from ..repo import GitTree

RESULTS = ("succeeded", "failed", "rolled-back", "drifted", "in-sync")
"""Results a deployment record may carry (anything else is shown as stored, in a neutral colour)."""


def target_environments(tree: FileSource) -> list[str]:
    """The environments with a directory of target pointers (`targets/<env>/<target>/`)."""
    return [env for env in tree.listdir(TARGETS) if tree.listdir(f"{TARGETS}/{env}")]


def target_names(tree: FileSource | None, env: str, entries: Mapping[str, Entry]) -> list[str]:
    """The targets of `env`: those its deployment records name, and those with a pointer, sorted."""
    names = {e.target for e in entries.values() if e.target is not None and e.environment == env}
    if tree is not None and one_component(env):
        names |= {n for n in tree.listdir(f"{TARGETS}/{env}") if tree.listdir(f"{TARGETS}/{env}/{n}")}
    return sorted(names)


def targets_of(
    tree: FileSource | None,
    env: str,
    entries: Mapping[str, Entry],
    ordered: Mapping[str, list[str]],
    attached: Attached,
    findings: list[Finding],
    here: str | None,
) -> list[dict[str, Any]]:
    """Each target of `env` as a summary (name, state, pointer, counts, pointer findings), from the
    page of `here` (None: the index). Reads the pointers, not the records."""
    found = []
    for name in target_names(tree, env, entries):
        chain = target_chain(env, name)
        hexes = ordered.get(chain, [])
        newest = entries[hexes[0]] if hexes else None
        state = (newest.result or "unknown") if newest is not None else "none"
        anchor = target_anchor(name)
        found.append(
            {
                "name": name,
                "chain": chain,
                "anchor": anchor,
                "href": (page_name(env) if env != here else "") + f"#{anchor}",
                "state": state,
                "state_class": state if state in (*RESULTS, "none") else "other",
                "last": {
                    "release": newest.release or "",
                    "completed": newest.decided_at,
                    "href": href(env, newest.hex, here),
                }
                if newest is not None
                else None,
                "count": len(hexes),
                "flagged": sum(1 for h in hexes if h in attached.by_record),
                "findings": [
                    finding_view(findings[i], attached.targets.get(i, []), here)
                    for i in attached.by_target.get(chain, [])
                ],
                "pointer": target_pointer(tree, env, name, entries, here),
            }
        )
    return found


def with_records(
    tree: GitTree,
    env: str,
    targets: list[dict[str, Any]],
    entries: Mapping[str, Entry],
    ordered: Mapping[str, list[str]],
    following: Mapping[str, list[str]],
    attached: Attached,
    findings: list[Finding],
) -> list[dict[str, Any]]:
    """`targets` (of `targets_of`), each with its deployment records, read as the page consumes them."""
    view = partial(deployment_view, entries=entries)
    return [
        {
            **t,
            "deployments": read_records(
                tree, ordered.get(t["chain"], []), entries, following, attached, findings, env, view
            ),
        }
        for t in targets
    ]


def target_pointer(
    tree: FileSource | None, env: str, target: str, entries: Mapping[str, Entry], here: str | None
) -> dict[str, Any] | None:
    """`targets/<env>/<target>/stella.version.json`: what the target runs now (None: no pointer)."""
    if tree is None or not (one_component(env) and one_component(target)):
        return None
    raw = tree.read(target_pointer_path(env, target))
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {"readable": False}
    release = as_dict(data.get("release"))
    previous = as_dict(data.get("previous"))
    return {
        "readable": True,
        "release": text(release.get("name")),
        "release_id": text(release.get("id")),
        "components": sorted(
            (text(n), text(as_dict(c).get("image")), text(as_dict(c).get("digest")))
            for n, c in as_dict(release.get("components")).items()
        ),
        "decision": _link(data.get("decision"), entries, here),
        "deployment": _link(data.get("deployment"), entries, here),
        "deployed_at": text(data.get("deployedAt")),
        "previous": {
            "release": text(previous.get("release")),
            "decision": _link(previous.get("decision"), entries, here),
        }
        if previous
        else None,
        "nothing": not release,
    }


def deployment_view(
    hex_id: str, statement: dict[str, Any], env: str, *, entries: Mapping[str, Entry]
) -> dict[str, Any]:
    """What a deployment record says, as display values (missing or odd fields become '')."""
    p = as_dict(statement.get("predicate"))
    kind = text(p.get("type")) or "unknown"
    result = text(p.get("result")) or "unknown"
    target = as_dict(p.get("target"))
    release = as_dict(p.get("release"))
    policy = as_dict(p.get("policy"))
    generator = as_dict(p.get("generator"))
    started, completed = text(p.get("startedAt")), text(p.get("completedAt"))
    rollout, rollback = as_dict(p.get("rollout")), as_dict(p.get("rollback"))
    return {
        "drift": [
            {
                "service": text(i.get("service")),
                "kind": text(i.get("kind")),
                "expected": text(i.get("expected")),
                "actual": text(i.get("actual")),
            }
            for i in dicts(p.get("drift"))
        ],
        "rollout": (
            f"{text(rollout.get('strategy'))}, batch {text(rollout.get('batch'))} of "
            f"{text(rollout.get('batches'))}"
            if rollout
            else ""
        ),
        "rollback": {
            "failed_decision": _link(rollback.get("failedDecision"), entries, env),
            "failed_deployment": _link(rollback.get("failedDeployment"), entries, env),
            "reason": text(rollback.get("reason")),
        }
        if rollback
        else None,
        "hex": hex_id,
        "id": f"sha256:{hex_id}",
        "readable": bool(p),
        "type": kind,
        "type_class": kind if kind in DEPLOYMENT_TYPES else "other",
        "result": result,
        "result_class": result if result in RESULTS else "other",
        "reason": text(p.get("reason")),
        "decision": _link(p.get("decision"), entries, env),
        "release": {"name": text(release.get("name")), "id": text(release.get("id"))},
        "target": {
            "name": text(target.get("name")),
            "project": text(target.get("project")),
            "agent": text(target.get("agent")),
        },
        "policy": {
            "id": text(policy.get("id")),
            "record": _link(policy.get("record"), entries, env),
        },
        "started": started,
        "completed": completed,
        "duration": duration(started, completed),
        "steps": [_step(s) for s in dicts(p.get("steps"))],
        "containers": [
            {
                "service": text(c.get("service")),
                "container": text(c.get("container")),
                "image": text(c.get("image")),
                "digest": text(c.get("digest")),
            }
            for c in dicts(p.get("containers"))
        ],
        "artifacts": [
            {"name": text(a.get("name")), "sha256": text(a.get("sha256"))} for a in dicts(p.get("artifacts"))
        ],
        "tenant": text(p.get("tenant")),
        "generator": " ".join(x for x in (text(generator.get("name")), text(generator.get("version"))) if x),
    }


def _step(step: dict[str, Any]) -> dict[str, Any]:
    code = step.get("exitCode")
    started, completed = text(step.get("startedAt")), text(step.get("completedAt"))
    output = text(step.get("output"))
    return {
        "stage": text(step.get("stage")),
        "command": text(step.get("command")),
        "exit_code": text(code),
        "exit_class": "ok" if code == 0 and not isinstance(code, bool) else "bad",
        "output": output,
        "lines": len(output.splitlines()),
        "started": started,
        "completed": completed,
        "duration": duration(started, completed),
    }


def _link(value: Any, entries: Mapping[str, Entry], here: str | None) -> dict[str, Any] | None:
    """An evidence id the record names, linked to that record when it is on the branch."""
    if value is None or value == "":
        return None
    return link(text(value), entries, here)


def duration(started: str, completed: str) -> str:
    """`completed - started` as `4s`, `2m 05s` or `1h 02m 05s` ('' when either is not a time with a
    zone; negative, with a minus sign, when completed is before started)."""
    try:
        start, end = datetime.fromisoformat(started), datetime.fromisoformat(completed)
        seconds = round((end - start).total_seconds())
    except (ValueError, TypeError):
        return ""  # unparsable, or naive against aware (TypeError)
    if start.utcoffset() is None or end.utcoffset() is None:
        return ""
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{sign}{minutes}m {secs:02d}s"
    return f"{sign}{secs}s"
