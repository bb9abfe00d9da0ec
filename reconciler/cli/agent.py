"""`stella agent`: run one target's deployment agent, once or on an interval (DESIGN §9).

Exit codes: 0 the target runs what the evidence says (deployed now, or already), or waits for the
earlier batches of a rolling rollout; 1 the target drifted from its lock (and no remediation put it
right), the deployment failed (a record says why, and whether the
earlier release was rolled back to), was skipped as failed before, the rollout is halted by a failure
in an earlier batch, or the source refused a record (kept under `refused/`); 2 invalid input (a chain
that does not start at the pinned root, a target or agent key the policy in force does not hold, a bad
key file); 3 the source or the engine could not be reached. The agent loop and the plugins are imported
only when it runs.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._app import NOT_OK, OK, TRANSIENT, Parser, Register, Subcommands, Usage, emit, err, say

if TYPE_CHECKING:
    from ..agent import AgentRun

_ROOT_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_NOT_OK = ("failed", "rolled-back", "skipped", "halted")
"""Actions that exit 1: the target does not run the decision, and waiting will not change that."""


def add_agent(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser(
        "agent",
        parents=[common],
        help="deploy what the evidence says to one target",
        description="--repo names where the evidence branch is: a path, git://, http(s)://, ssh://",
    )
    p.add_argument("--target", required=True, metavar="NAME", help="the target (in an environment's targets)")
    p.add_argument("--key", required=True, metavar="FILE", help="the agent's private key (PEM, P-256)")
    p.add_argument("--state-dir", required=True, metavar="DIR", help="the agent's own directory on the host")
    p.add_argument(
        "--root", required=True, metavar="sha256:ID", help="the genesis the policy chain must start at"
    )
    p.add_argument("--evidence-ref", default="refs/heads/stella/evidence", metavar="REF")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="seconds `up` and the health checks may wait for healthy services "
        "(default: the environment's rollout.healthTimeout)",
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="one run, then exit (the default)")
    when.add_argument("--interval", type=float, metavar="S", help="run every S seconds until SIGTERM")
    p.set_defaults(func=cmd_agent)


def _run_json(run: AgentRun) -> dict[str, Any]:
    return {
        "target": run.target,
        "environment": run.environment,
        "decision": run.decision,
        "action": run.action,
        "result": run.result,
        "reason": run.reason,
        "deployment": run.deployment,
        "rollback": run.rollback,
        "rollbackResult": run.rollback_result,
        "drift": run.drift,
        "driftRecord": run.drift_record,
        "remediation": run.remediation,
        "remediationResult": run.remediation_result,
        "batch": run.batch,
        "batches": run.batches,
        "pushed": run.pushed,
        "refused": run.refused,
        "unreachable": run.unreachable,
    }


def _print_run(run: AgentRun) -> None:
    say(
        f"{run.target} ({run.environment or '?'}): {run.action}"
        + (f" {run.decision}" if run.decision else "")
        + (f": {run.reason}" if run.reason else "")
    )
    if run.deployment:
        say(f"deployment record {run.deployment} ({run.result})")
    if run.rollback:
        say(f"rollback record {run.rollback} ({run.rollback_result})")
    for item in run.drift or []:
        say(f"drift: {item['service']} {item['kind']}: expected {item['expected']}, got {item['actual']}")
    if run.drift_record:
        say(f"drift observation {run.drift_record} (the drift state changed)")
    if run.remediation:
        say(f"remediation deployment record {run.remediation} ({run.remediation_result})")
    for refused in run.refused:
        say(f"deployment record {refused} refused by the source: kept under refused/ in the state directory")


def _drifted(run: AgentRun) -> bool:
    """The target differs from its lock, and no remediation this run put it right."""
    return bool(run.drift) and run.remediation_result != "succeeded"


def _source(repo: str) -> str:
    """`--repo` as Git takes it: a URL as given, a local path made absolute."""
    if "://" in repo or re.match(r"^[\w.-]+@[\w.-]+:", repo):
        return repo
    return str(Path(repo).resolve())


def cmd_agent(args: argparse.Namespace) -> int:
    from ..agent import AgentOptions, run_once
    from ..discover import discover
    from ..loop import run
    from ..sign import KeySigner, key_hint, load_private_key

    if not _ROOT_RE.match(args.root):
        raise Usage(f"--root {args.root!r} is not an evidence id (sha256:<64 hex>)")
    if args.timeout is not None and args.timeout <= 0:
        raise Usage("--timeout must be a positive number of seconds")
    key = load_private_key(Path(args.key))
    signer = KeySigner(key)
    options = AgentOptions(
        target=args.target,
        url=_source(args.repo),
        state_dir=Path(args.state_dir).resolve(),
        root=args.root,
        ref=args.evidence_ref,
        timeout=args.timeout,
    )
    agents = discover(kinds=("agents",))

    def once() -> AgentRun:
        return run_once(options, agents.agent, signer, key_hint(key.public_key()), os.environ)

    if args.interval is None:
        result = once()
        emit(args, _run_json(result), lambda: _print_run(result))
        if result.unreachable:
            return TRANSIENT
        return NOT_OK if result.action in _NOT_OK or result.refused or _drifted(result) else OK
    if args.interval <= 0:
        raise Usage("--interval must be a positive number of seconds")
    return run(
        once,
        interval=args.interval,
        report=lambda result: emit(args, _run_json(result), lambda: _print_run(result)),
        on_error=lambda exc: err().print(f"error: {exc.diagnostics()}", markup=False),
    )


COMMANDS: dict[str, Register] = {"agent": add_agent}
