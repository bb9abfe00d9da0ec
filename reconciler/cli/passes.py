"""Commands that run or dry-run a reconcile pass: `reconcile`, `plan`, `why` and `usage`.

They print a pass's result: as text, as the stable `-o json` object (docs/cli.md), or, for `plan`, as
the Markdown a pull request comment shows. The loop itself is imported by the handlers, never here.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ..errors import Problem, ValidationFailed
from ..timefmt import evidence_time
from ._app import INVALID, NOT_OK, OK, TRANSIENT, Parser, Register, Subcommands, Usage, emit, err, say
from ._session import Session, now, open_session, progress
from .workflow import print_policy_change

if TYPE_CHECKING:
    from ..results import Outcome, PassResult


# --- reconcile -----------------------------------------------------------------------------------


def add_reconcile(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser("reconcile", parents=[common], help="run the reconcile loop")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between passes")
    p.set_defaults(func=cmd_reconcile)


def _pass_once(session: Session) -> PassResult:
    from ..loop import reconcile

    return reconcile(
        session.repo,
        session.plugins,
        now=now,
        signer=session.signer,
        offline=session.offline,
        progress=progress(),
    )


def _pass_exit(result: PassResult) -> int:
    if result.problems:
        return INVALID
    if result.transient:
        return TRANSIENT
    return OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    from ..loop import run

    session = open_session(args)
    if args.once:
        result = _pass_once(session)
        emit(args, pass_json(result), lambda: _print_pass(result))
        return _pass_exit(result)
    if args.interval <= 0:
        raise Usage("--interval must be a positive number of seconds")
    return run(
        lambda: _pass_once(session),
        interval=args.interval,
        report=lambda result: emit(args, pass_json(result), lambda: _print_pass(result)),
        on_error=lambda exc: err().print(f"error: {exc.diagnostics()}", markup=False),
    )


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    from ..evidence import gate_json

    decision = outcome.decision
    return {
        "promotion": outcome.promotion_id,
        "environment": outcome.environment,
        "release": outcome.release,
        "decision": decision.result if decision else "error",
        "evidence": outcome.evidence,
        "problem": outcome.problem,
        "retryAt": evidence_time(decision.retry_at) if decision and decision.retry_at else None,
        "gates": [gate_json(g) for g in decision.gates] if decision else [],
    }


def pass_json(result: PassResult) -> dict[str, Any]:
    """The `-o json` object of `reconcile --once` and `plan`."""
    return {
        "sourceCommit": result.source_commit,
        "evidenceCommit": result.evidence_commit,
        "locked": [lock.model_dump(mode="json") for lock in result.locked],
        "decisions": [_outcome_json(o) for o in result.outcomes],
        "problems": [p.as_dict() for p in result.problems],
        "transient": result.transient,
        "limits": result.limits,
        "races": result.races,
        "policy": result.policy,
        "ratification": result.ratification,
        "policyChange": result.policy_change.as_json() if result.policy_change else None,
        "ignored": result.ignored,
    }


def _print_pass(result: PassResult) -> None:
    say(f"read {result.source_commit[:12]}")
    for lock in result.locked:
        say(f"locked release {lock.name} as {lock.id}")
        for name, comp in lock.components.items():
            say(f"  {name}: {comp.pinned}")
    for outcome in result.outcomes:
        if outcome.decision is None:
            continue
        decision = outcome.decision
        line = f"{outcome.promotion_id}: {decision.result}"
        if outcome.evidence:
            line += f" (evidence {outcome.evidence})"
        say(line)
        for gate in decision.blocking:
            say(f"  {gate.gate}: {gate.status} ({gate.reason}) {gate.message}")
    for problem in result.problems:
        say(f"error: {problem}")
    for message in result.transient:
        say(f"unavailable: {message}")
    for message in result.limits:
        say(f"limit: {message}")
    if result.evidence_commit:
        say(f"wrote evidence commit {result.evidence_commit[:12]}")
    elif not (result.problems or result.transient or result.pending):
        say("nothing new")


# --- plan ----------------------------------------------------------------------------------------


def add_plan(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser("plan", parents=[common], help="dry-run the decisions of open promotions")
    p.add_argument("--rev", default="HEAD", help="the commit to plan (default: HEAD)")
    p.add_argument("--base", help="only promotions added or changed since this revision")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from ..manifests import manifest_of
    from ..passes import dry_run

    session = open_session(args)
    repo = session.repo
    commit = repo.resolve_ref(args.rev)
    if commit is None:
        raise Usage(f"no such revision {args.rev!r}")
    only = None
    if args.base:
        base = repo.resolve_ref(args.base)
        if base is None:
            raise Usage(f"no such revision {args.base!r} (--base)")
        changed = (manifest_of(path) for path in repo.changed_paths(base, commit))
        only = {ident for kind, ident in filter(None, changed) if kind in ("promotion", "approval")}
    result = dry_run(
        repo,
        session.plugins,
        now=now(),
        commit=commit,
        only=only,
        offline=session.offline,
        progress=progress(),
    )
    if args.output == "markdown":
        print(plan_markdown(result))
    else:
        emit(args, pass_json(result), lambda: _print_plan(result))
    if result.problems:
        return INVALID
    if result.transient:
        return TRANSIENT
    return OK if all(o.decision and o.decision.result == "allow" for o in result.outcomes) else NOT_OK


def _print_plan(result: PassResult) -> None:
    say(f"plan for {result.source_commit[:12]} (nothing is written)")
    if result.ratification:
        say(
            f"policy {result.policy} would be ratified first "
            f"({'genesis' if not result.policy_change else 'approved'})"
        )
    if result.policy_change is not None and result.policy_change.state != "ratify":
        say(f"policy change pending: decisions below are made under the ratified policy {result.policy}")
        print_policy_change(result.policy_change)
    for line in result.ignored:
        say(f"ignored on the evidence branch: {line}")
    if not result.outcomes:
        say("no open promotions")
    for outcome in result.outcomes:
        decision = outcome.decision
        say(f"{outcome.promotion_id} -> {outcome.environment}: {decision.result if decision else 'error'}")
        if outcome.problem:
            say(f"  error: {outcome.problem}")
        for gate in decision.gates if decision else ():
            when = f" (until {evidence_time(gate.retry_at)})" if gate.retry_at else ""
            say(f"  {gate.status:<7} {gate.gate}: {gate.reason}: {gate.message}{when}")
    for problem in result.problems:
        if not any(problem.file == f"promotions/{o.promotion_id}.yaml" for o in result.outcomes):
            say(f"error: {problem}")


def plan_markdown(result: PassResult) -> str:
    """A plan as the Markdown of a pull request comment: the policy change, then each promotion's gates."""
    icons = {"pass": "✅", "fail": "❌", "pending": "⏳", "error": "⚠️"}
    lines = [f"### Stella plan for `{result.source_commit[:12]}`", ""]
    change = result.policy_change
    if change is not None:
        lines += [
            f"#### Policy change `{(change.proposed or 'unreadable')[:19]}…`: "
            f"**{change.state}** ({change.reason})",
            "",
            change.message.replace("|", "\\|"),
            "",
            f"Decisions are made under the ratified policy `{change.ratified}` until this change is "
            "ratified.",
            "",
            "Changed files: " + (", ".join(f"`{p}`" for p in change.changed) or "none"),
            "",
        ]
        if change.votes:
            lines += ["| approver | decision | counted |", "|---|---|---|"]
            for judged in change.votes:
                counted = "yes" if judged.counts else f"no: `{judged.code}` {judged.message}"
                lines.append(f"| {judged.vote.identity} | {judged.vote.approval.decision} | {counted} |")
            lines.append("")
        if change.can_approve:
            lines += ["Can still approve: " + ", ".join(change.can_approve), ""]
    if not result.outcomes:
        lines.append("No open promotions.")
    for outcome in result.outcomes:
        decision = outcome.decision
        verdict = decision.result if decision else "error"
        lines += [f"#### `{outcome.promotion_id}` → `{outcome.environment}`: **{verdict}**", ""]
        if outcome.problem:
            lines += [f"Error: {outcome.problem}", ""]
        if decision:
            lines += ["| gate | status | reason | details |", "|---|---|---|---|"]
            for gate in decision.gates:
                detail = gate.message.replace("|", "\\|")
                if gate.retry_at:
                    detail += f" (until {evidence_time(gate.retry_at)})"
                lines.append(
                    f"| {gate.gate} | {icons[gate.status]} {gate.status} | `{gate.reason}` | {detail} |"
                )
            lines.append("")
    for problem in result.problems:
        lines.append(f"- ⚠️ `{problem}`")
    return "\n".join(lines).rstrip() + "\n"


# --- why -----------------------------------------------------------------------------------------


def add_why(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser("why", parents=[common], help="every gate's result and reason for one promotion")
    p.add_argument("promotion")
    p.set_defaults(func=cmd_why)


def cmd_why(args: argparse.Namespace) -> int:
    from ..chain import open_evidence
    from ..ledger import Ledger
    from ..manifests import held_promotion
    from ..passes import dry_run, source_commit

    session = open_session(args)
    repo = session.repo
    _ref, head, index = open_evidence(repo, repo.tree(source_commit(repo)[1]))
    recorded = index.decided(args.promotion)
    record = index.record(recorded) if recorded else None
    index.close()
    if recorded and record:
        raw = Ledger(repo.tree(head)).statement_raw(recorded.removeprefix("sha256:")) if head else None
        statement = json.loads(raw) if raw else {}
        decision = statement.get("predicate", {}).get("decision", {})
        payload = {"promotion": args.promotion, "recorded": True, "evidence": recorded, **decision}

        def text() -> None:
            when = evidence_time(record.decided_at)
            say(f"{args.promotion}: {record.result} (recorded {when}, evidence {recorded})")
            for gate in decision.get("gates", []):
                say(f"  {gate['status']:<7} {gate['gate']}: {gate['reason']}: {gate['message']}")

        emit(args, payload, text)
        return OK if record.result == "allow" else NOT_OK
    # on the branch the reconciler reads; else at HEAD (a pull request's checkout)
    outcome = None
    held: list[Problem] = []
    for commit in dict.fromkeys([source_commit(repo)[1], repo.resolve_ref("HEAD")]):
        if commit is None:
            continue
        result = dry_run(
            repo, session.plugins, now=now(), commit=commit, only={args.promotion}, offline=session.offline
        )
        outcome = next((o for o in result.outcomes if o.promotion_id == args.promotion), None)
        if outcome is not None:
            break
        held = held or [p for p in result.problems if held_promotion(p.file) == args.promotion]
    if outcome is None and held:  # its file (or an approval of it) does not load: say where
        raise ValidationFailed(held)
    if outcome is None:
        raise Usage(
            f"no promotion {args.promotion!r} on {session.settings.branch} or at HEAD "
            f"(promotions/{args.promotion}.yaml)"
        )
    emit(args, {"recorded": False, **_outcome_json(outcome)}, lambda: _print_plan(result))
    return OK if outcome.decision and outcome.decision.result == "allow" else NOT_OK


# --- usage ---------------------------------------------------------------------------------------


def add_usage(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser("usage", parents=[common], help="usage against the limits of stella.yaml")
    p.set_defaults(func=cmd_usage)


def cmd_usage(args: argparse.Namespace) -> int:
    from ..chain import open_evidence
    from ..gates.quota import day_start
    from ..locking import digests_locked_since
    from ..passes import source_commit

    session = open_session(args)
    repo, settings = session.repo, session.settings
    _, commit = source_commit(repo)
    when = now()
    _ref, head, index = open_evidence(repo, repo.tree(commit))
    try:
        deployments = index.allowed_since(day_start(when))
    finally:
        index.close()
    environments = [n for n in repo.tree(commit).listdir("environments") if n.endswith(".yaml")]
    used = {
        "environments": len(environments),
        "newDigestsPerDay": len(digests_locked_since(repo, head, day_start(when))),
        "deploymentsPerDay": deployments,
    }
    rows = []
    for name, value in used.items():
        limit = getattr(settings.limits, name)
        hard = limit.hard if limit else None
        soft = limit.soft if limit else None
        state = "ok"
        if hard is not None and value >= hard:
            state = "at-limit" if value == hard else "over"
        elif soft is not None and value >= soft:
            state = "warning"
        rows.append({"limit": name, "used": value, "soft": soft, "hard": hard, "state": state})

    def text() -> None:
        say(f"usage of {settings.tenant} on {evidence_time(when)[:10]} (UTC day)")
        for row in rows:
            bound = (
                f"{row['used']} of {row['hard']}" if row["hard"] is not None else f"{row['used']} (no limit)"
            )
            soft = f", soft {row['soft']}" if row["soft"] is not None else ""
            say(f"  {row['limit']:<18} {bound}{soft}  {row['state']}")

    emit(args, {"tenant": settings.tenant, "day": evidence_time(when)[:10], "limits": rows}, text)
    return NOT_OK if any(r["state"] == "over" for r in rows) else OK


COMMANDS: dict[str, Register] = {
    "plan": add_plan,
    "why": add_why,
    "usage": add_usage,
    "reconcile": add_reconcile,
}
