"""One record of the evidence branch as its environment's page shows it.

`read_records()` reads the records of one page one at a time, as the template asks for them, and turns
each statement (of any shape: it may have been tampered with) into plain display values: who, what,
why, how and when, its neighbours in the chain, and the findings that concern it.

Must not: verify anything (the signing hint is read, not checked), keep records once yielded, or
produce markup (the template escapes every value).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..ledger import Ledger
from .findings import Attached, finding_view
from .values import as_dict, dicts, href, short, text

if TYPE_CHECKING:
    from ..audit import Finding
    from ..repo import GitTree
    from .branch import Entry

_STATUSES = ("pass", "fail", "pending", "error")
_RESULTS = ("allow", "deny")
_TYPES = ("release_decision", "deployment", "rollback")


def read_records(
    tree: GitTree,
    hexes: list[str],
    entries: Mapping[str, Entry],
    children: Mapping[str, list[str]],
    attached: Attached,
    findings: list[Finding],
    env: str,
    view: Callable[[str, dict[str, Any], str], dict[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """The records of one page, read one at a time (the template consumes them as they come).

    `view` turns a statement into what the page shows of it (default: `record_view`, a decision's)."""
    view_of = view or record_view
    for position, hex_id in enumerate(hexes, start=1):
        raw = Ledger(tree).statement_raw(hex_id)
        statement: Any = None
        with contextlib.suppress(ValueError):
            statement = json.loads(raw or b"")
        del raw
        shown = view_of(hex_id, statement if isinstance(statement, dict) else {}, env)
        shown["position"] = position
        shown["hint"] = key_hint(Ledger(tree).bundle(hex_id))
        previous = entries[hex_id].previous
        if previous is None:
            shown["previous"] = None
        elif previous in entries:
            shown["previous"] = {
                "href": href(entries[previous].environment, previous, env),
                "label": short(f"sha256:{previous}"),
                "environment": entries[previous].environment,
            }
        else:
            shown["previous"] = {"href": None, "label": short(f"sha256:{previous}"), "environment": None}
        shown["next"] = [
            {"href": href(entries[h].environment, h, env), "label": short(f"sha256:{h}")}
            for h in sorted(children.get(hex_id, []))
        ]
        shown["findings"] = [
            finding_view(findings[i], attached.targets.get(i, []), env)
            for i in attached.by_record.get(hex_id, [])
        ]
        yield shown


def record_view(hex_id: str, statement: dict[str, Any], env: str) -> dict[str, Any]:
    """What a statement says, as display values (missing or odd fields become '' or 'unknown')."""
    p = as_dict(statement.get("predicate"))
    record_type = text(p.get("type")) or "unknown"
    decision = as_dict(p.get("decision"))
    result = text(decision.get("result") or p.get("result")) or "unknown"
    release = as_dict(p.get("release"))
    promotion = as_dict(p.get("promotion"))
    actors = as_dict(p.get("actors"))
    generator = as_dict(p.get("generator"))
    requester = as_dict(actors.get("requester")) if "requester" in actors else None
    return {
        "hex": hex_id,
        "id": f"sha256:{hex_id}",
        "readable": bool(p),
        "type": record_type,
        "type_class": record_type if record_type in _TYPES else "other",
        "result": result,
        "result_class": result if result in _RESULTS else "other",
        "tenant": text(p.get("tenant")),
        "generator": " ".join(x for x in (text(generator.get("name")), text(generator.get("version"))) if x),
        "predicate_type": text(statement.get("predicateType")),
        "environment": env,
        "target": text(p.get("target")),
        "promotion": {
            "id": text(promotion.get("id")),
            "reason": text(promotion.get("reason")),
            "commit": text(promotion.get("commit")),
        },
        "requester": _actor(requester, "requester") if requester is not None else None,
        "approvers": [_actor(a, "approver") for a in dicts(actors.get("approvers"))],
        "release": {
            "name": text(release.get("name")),
            "id": text(release.get("id")),
            "components": sorted(
                (
                    {
                        "name": text(name),
                        "image": text(as_dict(c).get("image")),
                        "tag": text(as_dict(c).get("tag")),
                        "digest": text(as_dict(c).get("digest")),
                    }
                    for name, c in as_dict(release.get("components")).items()
                ),
                key=lambda c: c["name"],
            ),
        },
        "gates": [_gate(g) for g in dicts(decision.get("gates"))],
        "artifacts": [
            {"name": text(a.get("name")), "sha256": text(a.get("sha256"))} for a in dicts(p.get("artifacts"))
        ],
        "inputs": text(as_dict(p.get("inputs")).get("sha256")),
        "times": [
            (label, text(p.get(key)))
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
        "identity": text(actor.get("identity")),
        "verified": verified,
        "decision": text(actor.get("decision")),
        "time": text(actor.get("time")),
        "commit": text(actor.get("commit")),
        "key": text(actor.get("key")),
        "reason": text(actor.get("reason")),
    }


def _gate(gate: dict[str, Any]) -> dict[str, Any]:
    status = text(gate.get("status"))
    return {
        "gate": text(gate.get("gate")),
        "status": status,
        "status_class": status if status in _STATUSES else "other",
        "reason": text(gate.get("reason")),
        "message": text(gate.get("message")),
        "retry_at": text(gate.get("retryAt")),
        "facts": [
            (text(k), v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False))
            for k, v in sorted(as_dict(gate.get("facts")).items())
        ],
    }


def key_hint(raw: bytes | None) -> dict[str, str]:
    """How the record was signed, from its bundle's verification material (not verified here)."""
    if raw is None:
        return {"kind": "missing", "value": ""}
    try:
        bundle = json.loads(raw)
    except ValueError:
        return {"kind": "unreadable", "value": ""}
    material = as_dict(as_dict(bundle).get("verificationMaterial"))
    if "publicKey" in material:
        return {"kind": "key", "value": text(as_dict(material["publicKey"]).get("hint"))}
    if "certificate" in material or "x509CertificateChain" in material:
        return {"kind": "certificate", "value": "keyless (certificate in the bundle)"}
    return {"kind": "unknown", "value": ""}
