"""The `stella` command: the only place that prints or exits.

Exit codes (DESIGN §5): 0 success; 1 the thing checked is not OK; 2 invalid input, config or usage
(the message names the file and line); 3 infrastructure failure after retries. `-o json` output is
stable: every command prints one JSON object on stdout, documented in docs/cli.md.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

import yaml
from rich.console import Console

from . import __version__, audit, demo, reference, replay
from .discover import Plugins, discover
from .errors import InvalidInput, Problem, StellaError, ValidationFailed
from .evidence import gate_json, rfc3339
from .gates.quota import day_start
from .governance import KEYS_DIR
from .loop import (
    Outcome,
    PassResult,
    digests_locked_since,
    dry_run,
    evidence_ref,
    open_evidence,
    ratified_settings,
    reconcile,
    run,
    source_commit,
)
from .manifests import held_promotion, load_repository, load_settings, manifest_of
from .models import Release, Settings
from .protocols import GateResult, Signer
from .repo import Repo, WorkTree
from .resolve import Resolver, resolve_release
from .scaffold import write_scaffold
from .sign import generate_key, key_signer_plugin
from .witness import witness
from .workflow import approve, approve_policy, promote

OK, NOT_OK, INVALID, TRANSIENT = 0, 1, 2, 3
BROKEN_PIPE = 128 + 13
"""Whoever read stdout stopped early (`stella … | head`): 128 + SIGPIPE, what shells report for `cat`."""
MAX_INPUT = 1 << 20
"""The most bytes read from a file named on the command line (a checkpoint is a few KB)."""

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


class Usage(InvalidInput):
    """Bad command-line usage."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        err.print(f"stella: error: {message}", markup=False)
        raise SystemExit(INVALID)


class _OutputError(OSError):
    """Writing to stdout failed (a closed pipe, a full disk): told apart from every other I/O error."""


class _Output:
    """`sys.stdout` while a command runs: the same stream, whose write errors raise `_OutputError`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise _OutputError(exc.errno, exc.strerror or str(exc)) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise _OutputError(exc.errno, exc.strerror or str(exc)) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _os_reason(exc: OSError, path: object = None) -> str:
    """The system's reason for `exc`, and the files it concerns when they are not `path` itself."""
    reason = exc.strerror or str(exc)
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None and str(f) != str(path)]
    return f"{reason} ({', '.join(files)})" if files else reason


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: Callable[[], None]) -> None:
    if args.output == "json":
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        text()


def _say(message: str) -> None:
    print(message)


def _root(args: argparse.Namespace) -> Path:
    return Path(args.repo).resolve()


def _plugins(args: argparse.Namespace, offline: bool) -> Plugins:
    return discover(offline=offline)


# --- commands ------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    root = _root(args)
    if args.rev:
        repo = Repo(root)
        commit = repo.resolve_ref(args.rev)
        if commit is None:
            raise Usage(f"no such revision {args.rev!r} in {root}")
        files: Any = repo.tree(commit)
        source = f"{root} at {commit[:12]}"
    else:
        if not root.is_dir():
            raise Usage(f"{root}: no such directory")
        files, source = WorkTree(root), str(root)
    try:
        repository = load_repository(files)
    except ValidationFailed as exc:
        problems = exc.problems
        _emit(
            args,
            {"valid": False, "source": source, "problems": [p.as_dict() for p in problems]},
            lambda: _say("\n".join([*map(str, problems), f"{len(problems)} problem(s) found"])),
        )
        return INVALID
    counts = {
        "environments": len(repository.environments),
        "releases": len(repository.releases),
        "promotions": len(repository.promotions),
        "approvals": sum(len(a) for a in repository.approvals.values()),
    }
    _emit(
        args,
        {"valid": True, "source": source, "problems": [], "counts": counts},
        lambda: _say(f"valid: {source}: " + ", ".join(f"{n} {k}" for k, n in counts.items())),
    )
    return OK


def _parse_components(pairs: Sequence[str]) -> dict[str, str]:
    components: dict[str, str] = {}
    for pair in pairs:
        name, sep, image = pair.partition("=")
        if not sep or not name or not image:
            raise Usage(
                f"component {pair!r}: expected NAME=IMAGE (e.g. web=registry.example.com/shop/web:1.4.0)"
            )
        if name in components:
            raise Usage(f"component {name!r} given twice")
        try:
            reference.parse(image)
        except reference.ReferenceError as exc:
            raise Usage(f"component {name!r}: {exc}") from None
        components[name] = image
    return components


def cmd_release_create(args: argparse.Namespace) -> int:
    root = _root(args)
    files = WorkTree(root)
    settings = load_settings(files)
    components = _parse_components(args.components)
    path = root / "releases" / f"{args.name}.yaml"
    draft = {
        "apiVersion": "stella/v1",
        "kind": "Release",
        "name": args.name,
        "components": {name: {"image": image} for name, image in components.items()},
    }
    try:
        release = Release.model_validate(draft)
    except ValueError as exc:
        raise Usage(f"release {args.name!r}: {exc}") from None
    if path.exists():
        raise Usage(
            f"{path.relative_to(root)} already exists: a release never changes; create a new release name"
        )
    offline = args.offline or settings.offline
    with Resolver(settings, _plugins(args, offline), files, offline=offline) as resolver:
        lock = resolve_release(release, resolver)
    doc = {
        "apiVersion": "stella/v1",
        "kind": "Release",
        "name": args.name,
        "components": {
            name: {"image": components[name], "digest": comp.digest} for name, comp in lock.components.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    header = f"# Written by `stella release create`; release id {lock.id}\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + text)
    os.replace(tmp, path)
    _emit(
        args,
        {"release": lock.model_dump(mode="json"), "file": str(path.relative_to(root))},
        lambda: _print_lock(lock, path.relative_to(root)),
    )
    return OK


def _print_lock(lock: Any, path: Path) -> None:
    _say(f"release {lock.name} ({lock.id}) -> {path}")
    for name, comp in lock.components.items():
        tag = f":{comp.tag}" if comp.tag else ""
        _say(f"  {name}: {comp.image}{tag} -> {comp.digest}")


@dataclass
class _Session:
    """What most commands need: the repository, its settings at the branch head, and the plugins."""

    repo: Repo
    settings: Settings
    plugins: Plugins
    offline: bool

    def signer(self) -> Signer:
        """The evidence signer the ratified `stella.yaml` names (the branch's before any genesis)."""
        settings = ratified_settings(self.repo, self.settings)
        return self.plugins.signer(settings.signer.plugin).open(settings.signer.key, os.environ)


def _session(args: argparse.Namespace) -> _Session:
    repo = Repo(_root(args))
    _, commit = source_commit(repo)
    settings = load_settings(repo.tree(commit))
    offline = bool(args.offline or settings.offline)
    return _Session(repo, settings, discover(offline=offline), offline)


def _progress() -> Callable[[str], None] | None:
    return (lambda msg: err.print(f"[dim]{msg}[/dim]")) if err.is_terminal else None


def _now() -> datetime:
    return datetime.now(UTC)


def _pass_once(args: argparse.Namespace, session: _Session) -> PassResult:
    return reconcile(
        session.repo,
        session.plugins,
        now=_now,
        signer=session.signer,
        offline=session.offline,
        progress=_progress(),
    )


def _pass_exit(result: PassResult) -> int:
    if result.problems:
        return INVALID
    if result.transient:
        return TRANSIENT
    return OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    session = _session(args)
    if args.once:
        result = _pass_once(args, session)
        _emit(args, _pass_json(result), lambda: _print_pass(result))
        return _pass_exit(result)
    if args.interval <= 0:
        raise Usage("--interval must be a positive number of seconds")
    return run(
        lambda: _pass_once(args, session),
        interval=args.interval,
        report=lambda result: _emit(args, _pass_json(result), lambda: _print_pass(result)),
        on_error=lambda exc: err.print(f"error: {exc.diagnostics()}", markup=False),
    )


def _gate_json(gate: GateResult) -> dict[str, Any]:
    return gate_json(gate)


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    decision = outcome.decision
    return {
        "promotion": outcome.promotion_id,
        "environment": outcome.environment,
        "release": outcome.release,
        "decision": decision.result if decision else "error",
        "evidence": outcome.evidence,
        "problem": outcome.problem,
        "retryAt": rfc3339(decision.retry_at) if decision and decision.retry_at else None,
        "gates": [_gate_json(g) for g in decision.gates] if decision else [],
    }


def _pass_json(result: PassResult) -> dict[str, Any]:
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
    _say(f"read {result.source_commit[:12]}")
    for lock in result.locked:
        _say(f"locked release {lock.name} as {lock.id}")
        for name, comp in lock.components.items():
            _say(f"  {name}: {comp.pinned}")
    for outcome in result.outcomes:
        if outcome.decision is None:
            continue
        decision = outcome.decision
        line = f"{outcome.promotion_id}: {decision.result}"
        if outcome.evidence:
            line += f" (evidence {outcome.evidence})"
        _say(line)
        for gate in decision.blocking:
            _say(f"  {gate.gate}: {gate.status} ({gate.reason}) {gate.message}")
    for problem in result.problems:
        _say(f"error: {problem}")
    for message in result.transient:
        _say(f"unavailable: {message}")
    for message in result.limits:
        _say(f"limit: {message}")
    if result.evidence_commit:
        _say(f"wrote evidence commit {result.evidence_commit[:12]}")
    elif not (result.problems or result.transient or result.pending):
        _say("nothing new")


def cmd_plan(args: argparse.Namespace) -> int:
    session = _session(args)
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
        now=_now(),
        commit=commit,
        only=only,
        offline=session.offline,
        progress=_progress(),
    )
    if args.output == "markdown":
        print(plan_markdown(result))
    else:
        _emit(args, _pass_json(result), lambda: _print_plan(result))
    if result.problems:
        return INVALID
    if result.transient:
        return TRANSIENT
    return OK if all(o.decision and o.decision.result == "allow" for o in result.outcomes) else NOT_OK


def _print_plan(result: PassResult) -> None:
    _say(f"plan for {result.source_commit[:12]} (nothing is written)")
    if result.ratification:
        _say(
            f"policy {result.policy} would be ratified first "
            f"({'genesis' if not result.policy_change else 'approved'})"
        )
    if result.policy_change is not None and result.policy_change.state != "ratify":
        _say(f"policy change pending: decisions below are made under the ratified policy {result.policy}")
        _print_policy_change(result.policy_change)
    for line in result.ignored:
        _say(f"ignored on the evidence branch: {line}")
    if not result.outcomes:
        _say("no open promotions")
    for outcome in result.outcomes:
        decision = outcome.decision
        _say(f"{outcome.promotion_id} -> {outcome.environment}: {decision.result if decision else 'error'}")
        if outcome.problem:
            _say(f"  error: {outcome.problem}")
        for gate in decision.gates if decision else ():
            when = f" (until {rfc3339(gate.retry_at)})" if gate.retry_at else ""
            _say(f"  {gate.status:<7} {gate.gate}: {gate.reason}: {gate.message}{when}")
    for problem in result.problems:
        if not any(problem.file == f"promotions/{o.promotion_id}.yaml" for o in result.outcomes):
            _say(f"error: {problem}")


def plan_markdown(result: PassResult) -> str:
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
                    detail += f" (until {rfc3339(gate.retry_at)})"
                lines.append(
                    f"| {gate.gate} | {icons[gate.status]} {gate.status} | `{gate.reason}` | {detail} |"
                )
            lines.append("")
    for problem in result.problems:
        lines.append(f"- ⚠️ `{problem}`")
    return "\n".join(lines).rstrip() + "\n"


def cmd_why(args: argparse.Namespace) -> int:
    session = _session(args)
    repo = session.repo
    _ref, head, index = open_evidence(repo, repo.tree(source_commit(repo)[1]))
    recorded = index.decided(args.promotion)
    record = index.record(recorded) if recorded else None
    index.close()
    if recorded and record:
        raw = repo.tree(head).read(f"evidence/{recorded.removeprefix('sha256:')}.json") if head else None
        statement = json.loads(raw) if raw else {}
        decision = statement.get("predicate", {}).get("decision", {})
        payload = {"promotion": args.promotion, "recorded": True, "evidence": recorded, **decision}

        def text() -> None:
            when = rfc3339(record.decided_at)
            _say(f"{args.promotion}: {record.result} (recorded {when}, evidence {recorded})")
            for gate in decision.get("gates", []):
                _say(f"  {gate['status']:<7} {gate['gate']}: {gate['reason']}: {gate['message']}")

        _emit(args, payload, text)
        return OK if record.result == "allow" else NOT_OK
    # on the branch the reconciler reads; else at HEAD (a pull request's checkout)
    outcome = None
    held: list[Problem] = []
    for commit in dict.fromkeys([source_commit(repo)[1], repo.resolve_ref("HEAD")]):
        if commit is None:
            continue
        result = dry_run(
            repo, session.plugins, now=_now(), commit=commit, only={args.promotion}, offline=session.offline
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
    _emit(args, {"recorded": False, **_outcome_json(outcome)}, lambda: _print_plan(result))
    return OK if outcome.decision and outcome.decision.result == "allow" else NOT_OK


def cmd_promote(args: argparse.Namespace) -> int:
    session = _session(args)
    promotion_id = f"{args.release}--{args.to}"
    branch = f"promote/{promotion_id}"
    result = promote(session.repo, session.settings.branch, args.release, args.to, args.reason)
    _emit(
        args,
        {
            "promotion": promotion_id,
            "branch": branch,
            "commit": result,
            "file": f"promotions/{promotion_id}.yaml",
        },
        lambda: _say(
            f"wrote promotions/{promotion_id}.yaml on branch {branch} ({result[:12]})\n"
            f"next: git push origin {branch}, and open a pull request into {session.settings.branch}"
        ),
    )
    return OK


def cmd_approve(args: argparse.Namespace) -> int:
    if args.policy:
        if args.promotion:
            raise Usage("give a PROMOTION or --policy, not both")
        return _approve_policy(args)
    if not args.promotion:
        raise Usage("give the PROMOTION to approve (or --policy to approve the policy change at HEAD)")
    session = _session(args)
    done = approve(
        session.repo,
        session.plugins,
        args.promotion,
        reject=args.reject,
        comment=args.comment,
        key=Path(args.key) if args.key else None,
        identity=args.identity,
        offline=session.offline,
    )
    verb = "rejected" if args.reject else "approved"
    _emit(
        args,
        {
            "promotion": args.promotion,
            "decision": "reject" if args.reject else "approve",
            "identity": done.identity,
            "release": done.release_id,
            "file": done.path,
            "commit": done.commit,
        },
        lambda: _say(
            f"{done.identity} {verb} {args.promotion} (release {done.release_id})\n"
            f"wrote {done.path} in signed commit {done.commit[:12]}; push it to the pull request's branch"
        ),
    )
    return OK


def _approve_policy(args: argparse.Namespace) -> int:
    repo = Repo(_root(args))
    done = approve_policy(
        repo,
        reject=args.reject,
        comment=args.comment,
        key=Path(args.key) if args.key else None,
        identity=args.identity,
    )
    verb = "rejected" if args.reject else "approved"
    _emit(
        args,
        {
            "policy": done.release_id,
            "decision": "reject" if args.reject else "approve",
            "identity": done.identity,
            "file": done.path,
            "commit": done.commit,
        },
        lambda: _say(
            f"{done.identity} {verb} policy {done.release_id}\n"
            f"wrote {done.path} in signed commit {done.commit[:12]}; it counts once it is on "
            "the branch the reconciler reads"
        ),
    )
    return OK


def cmd_policy_status(args: argparse.Namespace) -> int:
    """The ratified policy, the branch's (or --rev's), the files that differ, and the approvals."""
    session = _session(args)
    repo = session.repo
    commit = repo.resolve_ref(args.rev) if args.rev else None
    if args.rev and commit is None:
        raise Usage(f"no such revision {args.rev!r}")
    result = dry_run(repo, session.plugins, now=_now(), commit=commit, only=set(), offline=session.offline)
    change = result.policy_change
    genesis = result.ratification is not None
    payload = {
        "ratified": None if genesis else result.policy,
        "proposed": change.proposed if change else result.policy,
        "genesisPending": genesis,
        "change": change.as_json() if change else None,
        "ignored": result.ignored,
    }

    def text() -> None:
        if genesis:
            _say(f"no policy ratified yet: the next reconcile pass ratifies {result.policy} as the genesis")
        else:
            _say(f"ratified policy: {result.policy}")
        if change is None:
            if not genesis:
                _say("the branch's policy is the ratified one: nothing to ratify")
        else:
            _print_policy_change(change)
        for line in result.ignored:
            _say(f"ignored on the evidence branch: {line}")

    _emit(args, payload, text)
    return OK if change is None and not genesis else NOT_OK


def _print_policy_change(change: Any) -> None:
    _say(f"proposed policy: {change.proposed or '(unreadable)'}: {change.state} ({change.reason})")
    _say(f"  {change.message}")
    for path in change.changed:
        _say(f"  changed: {path}")
    for judged in change.votes:
        vote = judged.vote
        how = "counted" if judged.counts else f"not counted: {judged.code}: {judged.message}"
        _say(f"  {vote.approval.decision} by {vote.identity} ({how})")
    if change.authors:
        _say(f"  authors of the change: {', '.join(change.authors)}")
    if change.state in ("pending", "blocked"):
        _say(f"  can still approve: {', '.join(change.can_approve) or 'nobody'}")
    for problem in change.problems:
        _say(f"  error: {problem}")


def cmd_usage(args: argparse.Namespace) -> int:
    session = _session(args)
    repo, settings = session.repo, session.settings
    _, commit = source_commit(repo)
    now = _now()
    _ref, head, index = open_evidence(repo, repo.tree(commit))
    try:
        deployments = index.allowed_since(day_start(now))
    finally:
        index.close()
    environments = [n for n in repo.tree(commit).listdir("environments") if n.endswith(".yaml")]
    used = {
        "environments": len(environments),
        "newDigestsPerDay": len(digests_locked_since(repo, head, day_start(now))),
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
        _say(f"usage of {settings.tenant} on {rfc3339(now)[:10]} (UTC day)")
        for row in rows:
            bound = (
                f"{row['used']} of {row['hard']}" if row["hard"] is not None else f"{row['used']} (no limit)"
            )
            soft = f", soft {row['soft']}" if row["soft"] is not None else ""
            _say(f"  {row['limit']:<18} {bound}{soft}  {row['state']}")

    _emit(args, {"tenant": settings.tenant, "day": rfc3339(now)[:10], "limits": rows}, text)
    return NOT_OK if any(r["state"] == "over" for r in rows) else OK


def cmd_replay(args: argparse.Namespace) -> int:
    session = _session(args)
    root = _root_arg(args.root)
    ref = evidence_ref(session.repo, session.settings)
    head = session.repo.resolve_ref(ref)
    if head is None:
        raise Usage(f"{ref} does not exist: nothing to replay")
    tree = session.repo.tree(head)
    if root is not None:
        genesis = replay.genesis(session.repo, tree, head)
        if genesis != root:
            err.print(f"error: the policy chain on {ref} starts at {genesis}, not at the pinned root {root}")
            return NOT_OK
    if args.all == (args.evidence is not None):
        raise Usage("give one EVIDENCE_ID, or --all")
    ids = list(replay.records(tree)) if args.all else [args.evidence]
    results = [replay.replay_one(session.repo, tree, session.plugins, evidence) for evidence in ids]
    payload = {
        "identical": all(r.identical for r in results),
        "records": [
            {"evidence": r.evidence, "identical": r.identical, "differences": r.differences} for r in results
        ],
    }

    def text() -> None:
        for r in results:
            _say(f"{r.evidence}: {'identical' if r.identical else 'DIFFERENT'}")
            for difference in r.differences:
                _say(f"  {difference}")
        same = sum(r.identical for r in results)
        _say(f"{same} of {len(results)} record(s) replayed identically")

    _emit(args, payload, text)
    return OK if payload["identical"] else NOT_OK


@contextmanager
def _audit_bar(what: str) -> Iterator[audit.Progress | None]:
    """A progress bar on stderr while the evidence branch is verified (on a terminal only)."""
    if not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _audited(args: argparse.Namespace) -> tuple[Repo, Settings]:
    """The repository and its settings, as `_session` reads them, without loading plugins."""
    repo = Repo(_root(args))
    _, commit = source_commit(repo)
    return repo, load_settings(repo.tree(commit))


def _read_input(path: str, what: str) -> bytes:
    """At most `MAX_INPUT` bytes of `path` (a pipe or a device too, such as `/dev/stdin`)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_INPUT + 1)
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the {what}: {_os_reason(exc, path)}") from exc
    if len(data) > MAX_INPUT:
        raise InvalidInput(f"{path}: the {what} is larger than {MAX_INPUT} bytes")
    return data


def cmd_audit_witness(args: argparse.Namespace) -> int:
    session = _session(args)
    ref = evidence_ref(session.repo, session.settings)
    commit, witnessed = witness(
        session.repo,
        session.plugins,
        ref,
        evidence=args.evidence or None,
        token=args.token,
        environ=os.environ,
        progress=_progress(),
    )
    _emit(
        args,
        {"commit": commit, "witnessed": witnessed},
        lambda: _say(
            f"witnessed {len(witnessed)} record(s) in commit {commit[:12]}"
            if commit
            else "nothing to witness"
        ),
    )
    return OK


def _root_arg(value: str | None) -> str | None:
    if value is None:
        return None
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
        raise Usage(f"--root {value!r}: expected sha256:<64 hex> (the genesis record's evidence id)")
    return value


def cmd_audit_verify(args: argparse.Namespace) -> int:
    root = _root_arg(args.root)
    checkpoint = (_read_input(args.checkpoint, "checkpoint"), args.checkpoint) if args.checkpoint else None
    packet: audit.Packet | None = None
    with _audit_bar("verifying evidence") as progress:
        if args.packet:  # everything from the packet: no repository, no settings, no network
            packet, report = audit.verify_packet(
                Path(args.packet), checkpoint=checkpoint, progress=progress, root=root
            )
        else:
            repo, settings = _audited(args)
            ref = evidence_ref(repo, settings)
            keys = audit.load_keys(repo, settings.branch, missing_ok=True)
            keyless = audit.load_keyless(repo, settings.branch)
            read = (
                audit.read_checkpoint(checkpoint[0], audit.branch_keys(repo, ref, keys), checkpoint[1])
                if checkpoint
                else None
            )
            report = audit.verify(repo, ref, keys, progress, checkpoint=read, keyless=keyless, root=root)
    payload = {
        "ok": report.ok,
        "ref": report.ref,
        "head": report.head,
        "records": report.records,
        "bundles": report.bundles,
        "files": report.files,
        "commits": report.commits,
        "witnesses": report.witnesses,
        "chains": report.chains,
        "keys": [{"source": source, "hint": hint} for source, hint in report.keys.items()],
        "genesis": report.genesis,
        "rootPinned": report.root_pinned,
        "policy": report.policy,
        "policies": report.policies,
        "verifiedBy": report.verified_by,
        "identities": report.identities,
        "packet": str(Path(args.packet).resolve()) if packet else None,
        "checkpoint": args.checkpoint,
        "findings": [f.as_dict() for f in report.findings],
    }

    def text() -> None:
        for finding in report.findings:
            _say(f"FAIL {finding}")
        if report.genesis is None and report.root_pinned:
            _say(f"no genesis on {report.ref} is the pinned root {root}")
        elif report.genesis is None:
            _say(f"no policy chain on {report.ref}: signatures checked against {KEYS_DIR}/ of the branch")
        elif report.root_pinned:
            _say(f"policy chain from the pinned root {report.genesis}: {len(report.policies)} ratified")
        else:
            _say(
                f"policy chain from genesis {report.genesis} (trusted on first use; pin it with "
                f"--root {report.genesis}): {len(report.policies)} ratified"
            )
        if report.policy:
            _say(f"policy in force: {report.policy}")
        if report.identities:
            _say(f"re-verified {report.identities} signed commit(s) of requesters and approvers")
        if args.verbose:
            for evidence, key in sorted(report.verified_by.items()):
                _say(f"{evidence}: {key}")
        if packet is not None:
            for source, hint in report.keys.items():
                _say(f"key {source}: hint {hint} (compare with the hints you were given)")
        verdict = "OK" if report.ok else f"{len(report.findings)} finding(s)"
        where = f" from packet {args.packet}" if packet else ""
        against = f", against checkpoint {args.checkpoint}" if checkpoint else ""
        _say(
            f"{verdict}: {report.records} records, {report.bundles} bundles, {report.commits} commits "
            f"on {report.ref}{where}{against}"
        )

    _emit(args, payload, text)
    return OK if report.ok else NOT_OK


def cmd_audit_export(args: argparse.Namespace) -> int:
    repo, settings = _audited(args)
    done = audit.export_packet(repo, evidence_ref(repo, settings), settings.branch, Path(args.out))
    path = done.path.resolve()
    payload = {
        "packet": str(path),
        "ref": done.ref,
        "head": done.head,
        "records": done.records,
        "members": dict(done.members),
    }
    _emit(
        args,
        payload,
        lambda: _say(
            f"wrote {path}: {done.ref} at {done.head[:12]}, {done.records} records, "
            f"{len(done.members)} members\n"
            f"verify it anywhere, offline: stella audit verify --packet {done.path.name}"
        ),
    )
    return OK


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    """Verify the branch, then sign a checkpoint of it with the evidence key (refused on findings)."""
    repo, settings = _audited(args)
    ref = evidence_ref(repo, settings)
    keys = audit.load_keys(repo, settings.branch, missing_ok=True)
    with _audit_bar("verifying evidence") as progress:
        report = audit.verify(repo, ref, keys, progress)
    if not report.ok:
        for finding in report.findings:
            err.print(f"FAIL {finding}", markup=False)
        err.print(
            f"{len(report.findings)} finding(s): {ref} does not verify, so no checkpoint was signed",
            markup=False,
        )
        return NOT_OK
    checkpoint = audit.make_checkpoint(report, _now())
    signer = key_signer_plugin.open(settings.signer.key, os.environ)
    bundle = audit.sign_checkpoint(checkpoint, signer)
    target = Path(args.out) if args.out else None
    if target is not None:
        try:
            target.write_bytes(bundle)
        except OSError as exc:
            raise InvalidInput(f"{target}: cannot write the checkpoint: {exc.strerror or exc}") from exc
    if args.output == "json":
        payload = {**audit.checkpoint_json(checkpoint, bundle), "out": str(target) if target else None}
        print(json.dumps(payload, indent=2, sort_keys=True))
    elif target is not None:
        chains = ", ".join(f"{env} {head[:19]}" for env, head in sorted(checkpoint.chains.items()))
        _say(f"wrote {target}: checkpoint of {ref} at {checkpoint.head[:12]}, {checkpoint.records} records")
        _say(f"chain heads: {chains or 'none'}; keep it where the branch's writers cannot change it")
    else:
        sys.stdout.write(bundle.decode("utf-8"))
    return OK


def cmd_keys_generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        hint = generate_key(out)
    except OSError as exc:
        raise InvalidInput(f"{out}: cannot write the key pair: {_os_reason(exc, out)}") from exc
    _emit(
        args,
        {"private": str(out), "public": f"{out}.pub", "hint": hint},
        lambda: _say(f"wrote {out} (private, mode 0600) and {out}.pub\nkey hint: {hint}"),
    )
    return OK


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    admin_key = None
    if args.admin_key:
        admin_key = _read_input(args.admin_key, "admin's SSH public key").decode("utf-8", "replace").strip()
    admin = args.admin or _git_config("user.email") or "admin@example.com"
    if "@" not in admin:
        raise Usage(f"--admin {admin!r}: an identity is an email address")
    written, key = write_scaffold(target, admin, admin_key)
    _emit(
        args,
        {"directory": str(target), "files": written, "signingKey": str(key)},
        lambda: _say(
            f"scaffolded {target} ({len(written)} files)\n"
            f"evidence signing key: {key} (never commit it)\n"
            f"first policy admin: {admin}"
            + (
                ""
                if admin_key
                else " (add their SSH key to trust/allowed_signers before the first reconcile)"
            )
            + "\n"
            f"next: cd {target} && git add -A && git commit -m 'stella: initial' && "
            f"export STELLA_SIGNING_KEY={key}"
        ),
    )
    return OK


def _git_config(name: str) -> str | None:
    done = subprocess.run(["git", "config", "--get", name], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None if done.returncode == 0 else None


def _example_repo() -> Path:
    here = Path(__file__).resolve().parent.parent / "example-repo"
    override = os.environ.get("STELLA_EXAMPLE_REPO")
    path = Path(override) if override else here
    if not (path / "stella.yaml").is_file():
        raise Usage(f"{path}: example repository not found (set STELLA_EXAMPLE_REPO)")
    return path


def _git(cwd: Path, *argv: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Stella demo",
        "GIT_AUTHOR_EMAIL": "demo@example.com",
        "GIT_COMMITTER_NAME": "Stella demo",
        "GIT_COMMITTER_EMAIL": "demo@example.com",
    }
    subprocess.run(["git", *argv], cwd=cwd, env=env, check=True, capture_output=True)


def cmd_demo(args: argparse.Namespace) -> int:
    steps = []
    example = _example_repo()
    kept = demo.keep_directory(Path(args.keep)) if args.keep is not None else None
    if args.output != "json":
        out.print(demo.clock_line(), markup=False, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="stella-demo-") as tmp:
        for number, step in enumerate(demo.steps(example, kept or Path(tmp)), start=1):
            steps.append(step)
            if args.output == "json":
                continue
            out.print(f"\n[bold]{number}. {step.title}[/bold]")
            out.print(step.detail, markup=False, style="dim")
            for line in step.lines:
                out.print(f"  {line}", markup=False, soft_wrap=True)
    if args.output == "json":
        print(json.dumps([{"title": s.title, "ok": s.ok, "lines": s.lines} for s in steps], indent=2))
    elif kept is not None:
        out.print()
        for line in demo.kept(kept):
            out.print(line, markup=False, soft_wrap=True)
    return OK if all(s.ok for s in steps) else NOT_OK


# --- parser --------------------------------------------------------------------------------------


def _common(defaults: bool) -> _Parser:
    """Global options, accepted before or after the command (sub-parsers must not reset them)."""

    def d(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    common = _Parser(add_help=False)
    common.add_argument(
        "--repo", default=d(os.environ.get("STELLA_REPO", ".")), help="repository path (default: .)"
    )
    common.add_argument("-o", "--output", choices=["text", "json", "markdown"], default=d("text"))
    common.add_argument(
        "--offline",
        action="store_true",
        default=d(False),
        help="refuse network plugins; use mirror/",
    )
    common.add_argument("-v", "--verbose", action="count", default=d(0))
    return common


def cmd_audit_report(args: argparse.Namespace) -> int:
    """Verify the evidence branch, then write the HTML report; exit 1 when there are findings."""
    from .report import write_report

    session = _session(args)
    ref = evidence_ref(session.repo, session.settings)
    keys = audit.load_keys(session.repo, session.settings.branch, missing_ok=True)
    with _audit_bar("verifying evidence") as progress:
        report = audit.verify(session.repo, ref, keys, progress)
    target = Path(args.dir)
    try:
        paths = write_report(session.repo, ref, target, report)
    except OSError as exc:
        raise InvalidInput(f"{args.dir}: cannot write the report: {_os_reason(exc, target)}") from exc
    index, pages = paths[0].resolve(), [str(p.resolve()) for p in paths[1:]]
    _emit(
        args,
        {"index": str(index), "pages": pages, "findings": len(report.findings)},
        lambda: _say(str(index)),
    )
    if report.findings and args.output != "json":
        err.print(f"{len(report.findings)} finding(s): the evidence branch does not verify", markup=False)
    return OK if report.ok else NOT_OK


def _stella_command() -> list[str]:
    """This `stella`, by absolute path: the console script beside the interpreter, else `python -m`."""
    python = Path(os.path.abspath(sys.executable))
    script = python.parent / "stella"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(python), "-P", "-m", "reconciler.cli"]


def cmd_hook_pre_receive(args: argparse.Namespace) -> int:
    from . import hook  # only the hook commands need it

    def reject(line: str) -> None:
        sys.stderr.write(f"stella: rejected: {line}\n")

    try:
        updates = hook.parse_updates(sys.stdin.read())
        repo = hook.open_repository(os.environ.get("GIT_DIR") or args.repo, os.environ)
        rejections = hook.check_updates(repo, updates)
    except StellaError as exc:
        for line in exc.diagnostics().splitlines():
            reject(f"cannot check the push: {line}")
        return exc.exit_code
    except Exception as exc:  # a guard fails closed, and never with a traceback
        reject(f"internal error while checking the push ({type(exc).__name__}: {exc}); nothing was accepted")
        return TRANSIENT
    for rejection in rejections:
        reject(str(rejection))
    if args.output == "json":
        payload = {"accepted": not rejections, "rejections": [r.as_dict() for r in rejections]}
        print(json.dumps(payload, indent=2, sort_keys=True))
    return NOT_OK if rejections else OK


def cmd_hook_install(args: argparse.Namespace) -> int:
    from . import hook  # only the hook commands need it

    done = hook.install(Path(args.bare_repo), [*_stella_command(), "hook", "pre-receive"], force=args.force)
    command = " ".join(done.command)
    _emit(
        args,
        {"hook": str(done.path), "command": list(done.command), "changed": done.changed},
        lambda: _say(f"{'installed' if done.changed else 'already installed'}: {done.path} (runs {command})"),
    )
    return OK


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the repository and this installation; 1 when a check fails, 2 when the repository is unusable."""
    from . import doctor  # only `stella doctor` needs it

    diagnosis = doctor.diagnose(_root(args), offline=args.offline)
    payload = {
        "checks": [c.as_dict() for c in diagnosis.checks],
        "plugins": [p.as_dict() for p in diagnosis.plugins],
    }
    _emit(args, payload, lambda: _print_doctor(diagnosis))
    if not diagnosis.usable:
        return INVALID
    return NOT_OK if diagnosis.failed else OK


def _print_doctor(diagnosis: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    marks = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "red")}
    width = max((len(c.name) for c in diagnosis.checks), default=0)
    for c in diagnosis.checks:
        mark, style = marks[c.status]
        line = Text.assemble((mark, f"bold {style}"), f" {c.name:<{width}}  {c.message}")
        out.print(line, soft_wrap=True)
        for detail in c.details if c.status != "ok" else ():
            out.print(Text(f"    {detail}"), soft_wrap=True)
    table = Table(title="plugins", title_justify="left", box=None, padding=(0, 2, 0, 0), header_style="bold")
    for column in ("kind", "name", "version", "net", "api", "health", "distribution"):
        table.add_column(column, no_wrap=column != "distribution", overflow="fold")
    health_styles = {"loaded": "green", "refused": "yellow", "failed": "red"}
    for p in diagnosis.plugins:
        m = p.manifest
        table.add_row(
            p.kind,
            p.name,
            m.version if m else "-",
            ("yes" if m.network else "no") if m else "-",
            str(m.api_version) if m else "-",
            Text(p.health, style=health_styles[p.health]),
            Text(p.distribution or "?"),
        )
    out.print(table)
    for p in diagnosis.plugins:
        if p.reason:
            out.print(Text(f"  {p.group} {p.name}: {p.health}: {p.reason}"), soft_wrap=True)
    counts = {s: sum(c.status == s for c in diagnosis.checks) for s in ("ok", "warn", "fail")}
    out.print(f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failed", markup=False)


def build_parser() -> argparse.ArgumentParser:
    top, common = _common(True), _common(False)
    parser = _Parser(prog="stella", description="GitOps release orchestrator", parents=[top])
    parser.add_argument("--version", action="version", version=f"stella {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("validate", parents=[common], help="validate every manifest")
    p.add_argument("--rev", help="validate a commit instead of the work tree")
    p.set_defaults(func=cmd_validate)

    release = sub.add_parser("release", parents=[common], help="releases")
    rsub = release.add_subparsers(dest="release_command", required=True, parser_class=_Parser)
    p = rsub.add_parser("create", parents=[common], help="resolve tags now; write releases/NAME.yaml")
    p.add_argument("name")
    p.add_argument("components", nargs="+", metavar="COMP=IMAGE")
    p.set_defaults(func=cmd_release_create)

    p = sub.add_parser("promote", parents=[common], help="request a promotion on a new branch (for a PR)")
    p.add_argument("release")
    p.add_argument("--to", required=True, metavar="ENV")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("approve", parents=[common], help="approve (or reject) a promotion in a signed commit")
    p.add_argument("promotion", nargs="?")
    p.add_argument("--policy", action="store_true", help="approve the policy change at HEAD instead")
    p.add_argument("--reject", action="store_true", help="reject instead of approve (a reject blocks)")
    p.add_argument("--comment", default="")
    p.add_argument("--key", help="SSH private key to sign with (default: git config user.signingkey)")
    p.add_argument("--identity", help="approver identity (default: git config user.email)")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("plan", parents=[common], help="dry-run the decisions of open promotions")
    p.add_argument("--rev", default="HEAD", help="the commit to plan (default: HEAD)")
    p.add_argument("--base", help="only promotions added or changed since this revision")
    p.set_defaults(func=cmd_plan)

    policy_parser = sub.add_parser("policy", parents=[common], help="the ratified policy and changes to it")
    psub = policy_parser.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)
    p = psub.add_parser("status", parents=[common], help="ratified vs proposed policy, and approvals so far")
    p.add_argument("--rev", help="the commit whose policy is proposed (default: the branch head)")
    p.set_defaults(func=cmd_policy_status)

    p = sub.add_parser("why", parents=[common], help="every gate's result and reason for one promotion")
    p.add_argument("promotion")
    p.set_defaults(func=cmd_why)

    p = sub.add_parser("usage", parents=[common], help="usage against the limits of stella.yaml")
    p.set_defaults(func=cmd_usage)

    p = sub.add_parser("replay", parents=[common], help="recompute recorded decisions from their inputs")
    p.add_argument("evidence", nargs="?", metavar="EVIDENCE_ID")
    p.add_argument("--all", action="store_true", help="replay every record on the evidence branch")
    p.add_argument(
        "--root", metavar="sha256:ID", help="the genesis ratification the policy chain must start at"
    )
    p.set_defaults(func=cmd_replay)

    audit_parser = sub.add_parser("audit", parents=[common], help="verify the evidence branch")
    asub = audit_parser.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    p = asub.add_parser("witness", parents=[common], help="add keyless signatures to key-signed records")
    p.add_argument("evidence", nargs="*", metavar="EVIDENCE_ID", help="default: every record not witnessed")
    p.add_argument("--token", default="env:SIGSTORE_ID_TOKEN", help="the OIDC token reference (env:NAME)")
    p.set_defaults(func=cmd_audit_witness)

    p = asub.add_parser("verify", parents=[common], help="hashes, signatures, chains and history")
    p.add_argument("--packet", metavar="FILE", help="verify an exported packet (no repository needed)")
    p.add_argument(
        "--root", metavar="sha256:ID", help="the genesis ratification the policy chain must start at"
    )
    p.add_argument("--checkpoint", metavar="FILE", help="also check the branch against a signed checkpoint")
    p.set_defaults(func=cmd_audit_verify)
    p = asub.add_parser("export", parents=[common], help="write an offline evidence packet OUT (.tar.gz)")
    p.add_argument("out", metavar="OUT")
    p.set_defaults(func=cmd_audit_export)
    p = asub.add_parser("checkpoint", parents=[common], help="verify, then print a signed checkpoint")
    p.add_argument("--out", metavar="FILE", help="write the checkpoint to FILE instead of stdout")
    p.set_defaults(func=cmd_audit_checkpoint)
    p = asub.add_parser("report", parents=[common], help="verify, then write a static HTML report into DIR")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_audit_report)

    hook_parser = sub.add_parser("hook", parents=[common], help="server-side guard for a bare repository")
    hsub = hook_parser.add_subparsers(dest="hook_command", required=True, parser_class=_Parser)
    p = hsub.add_parser("pre-receive", parents=[common], help="check the ref updates git gives on stdin")
    p.set_defaults(func=cmd_hook_pre_receive)
    p = hsub.add_parser("install", parents=[common], help="install hooks/pre-receive in a repository")
    p.add_argument("bare_repo", metavar="BARE_REPO")
    p.add_argument("--force", action="store_true", help="replace an existing, different pre-receive hook")
    p.set_defaults(func=cmd_hook_install)

    p = sub.add_parser("doctor", parents=[common], help="check config, plugins, keys, Git access, evidence")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("reconcile", parents=[common], help="run the reconcile loop")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between passes")
    p.set_defaults(func=cmd_reconcile)

    keys = sub.add_parser("keys", parents=[common], help="evidence signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, parser_class=_Parser)
    p = ksub.add_parser("generate", parents=[common], help="write a P-256 key pair OUT and OUT.pub")
    p.add_argument("out")
    p.set_defaults(func=cmd_keys_generate)

    p = sub.add_parser("init", parents=[common], help="scaffold a new repository")
    p.add_argument("dir")
    p.add_argument("--admin", help="the first policy admin's identity (default: git config user.email)")
    p.add_argument("--admin-key", metavar="PUB", help="the first admin's SSH public key file (.pub)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("demo", parents=[common], help="the whole flow on a copy of example-repo/")
    p.add_argument(
        "--keep",
        metavar="DIR",
        help="work in DIR (new or empty) and leave it there, to look at the evidence branch afterwards",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. When stdout cannot be written, one line on stderr and exit 2, never a traceback;
    when its reader has gone (`stella … | head`), silence and `BROKEN_PIPE`."""
    stdout = sys.stdout
    if stdout is None:  # started with stdout closed (`stella … >&-`): print() writes nowhere
        return _command(argv)
    sys.stdout = cast(TextIO, _Output(stdout))
    try:
        try:
            return _command(argv)
        finally:
            sys.stdout.flush()  # now, not at exit, where the interpreter could only ignore its errors
    except _OutputError as exc:
        _discard(stdout)
        if exc.errno == errno.EPIPE:
            return BROKEN_PIPE
        err.print(f"error: cannot write the output: {exc.strerror}", markup=False, soft_wrap=True)
        return INVALID
    finally:
        sys.stdout = stdout


def _discard(stream: TextIO) -> None:
    """Point `stream` at /dev/null, so that the interpreter's last flush of what is left cannot fail
    (the recipe of the Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a file descriptor (a test's capture): nothing is left to flush
        pass


def _command(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
    except ValidationFailed as exc:
        _report(args, exc.problems, exc)
        return exc.exit_code
    except StellaError as exc:
        problems = exc.problems if isinstance(exc, InvalidInput) else []
        _report(args, problems, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except _OutputError:
        raise
    except OSError as exc:  # local I/O (a path, a permission, the disk): exit 2, not 3 (infrastructure)
        path = exc.filename
        message = _os_reason(exc) if path is None else f"{path}: {_os_reason(exc, path)}"
        _report(args, [], InvalidInput(message))
        return INVALID
    return code


def _report(args: argparse.Namespace, problems: list[Problem], exc: StellaError) -> None:
    if args.output == "json":
        print(
            json.dumps(
                {
                    "error": type(exc).__name__,
                    "message": str(exc),
                    "exitCode": exc.exit_code,
                    "problems": [p.as_dict() for p in problems],
                },
                indent=2,
                sort_keys=True,
            )
        )
    err.print(f"error: {exc.diagnostics()}", markup=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
