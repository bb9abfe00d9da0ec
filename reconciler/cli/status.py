"""`stella status [ENV]`: per target, what should run, what its sticker says, its last deployment.

Prints `reconciler.status`'s result: one line per target, or the stable `-o json` object (docs/cli.md).
Exit codes: 0 every target runs what it should (or has nothing to run); 1 some target is pending,
waiting, halted, failed, rolled back or unknown; 2 an environment the ratified policy does not have.
The evidence machinery is imported by the handler, never here (`stella --help` stays fast).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._app import NOT_OK, OK, Parser, Register, Subcommands, emit, repo_root, say

if TYPE_CHECKING:
    from ..status import Status, TargetStatus


def add_status(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser(
        "status",
        parents=[common],
        help="per target: what should run, the sticker, the last deployment",
    )
    p.add_argument("environment", nargs="?", metavar="ENV", help="only this environment")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from ..repo import Repo
    from ..status import read_status

    status = read_status(Repo(repo_root(args)), args.environment)
    emit(args, status.as_json(), lambda: _print_status(status))
    return OK if status.ok else NOT_OK


def _print_status(status: Status) -> None:
    if not status.environments:
        say("no environments")
    for environment in status.environments:
        decision = environment.should_run
        if not environment.targets:
            say(f"{environment.name}: no targets")
        rollout = environment.rollout
        if rollout is not None and rollout.strategy == "rolling" and rollout.state != "none":
            say(f"{environment.name}: rollout {rollout.strategy}: {rollout.state} ({rollout.reason})")
        for target in environment.targets:
            wants = f"{decision.release_name} ({decision.evidence[:19]}…)" if decision else "nothing"
            say(
                f"{environment.name}/{target.name}: {target.state} ({target.reason}); "
                f"should run {wants}; {_seen(target)}"
            )


def _seen(target: TargetStatus) -> str:
    """The sticker and the last deployment, in a few words."""
    from ..timefmt import evidence_time

    sticker, last = target.sticker, target.last
    if sticker is None:
        says = "no sticker"
    elif sticker.verified:
        name = (sticker.release or {}).get("name") or "?"
        says = f"sticker: {name} since {sticker.deployed_at}"
    else:
        says = f"sticker not believed ({sticker.problem})"
    if last is None:
        return f"{says}; no deployment yet"
    when = evidence_time(last.decided_at)
    kind = "last deployment" if last.record_type == "deployment" else f"last {last.record_type}"
    seen = f"{says}; {kind} {last.release_name} {last.result} at {when} ({last.evidence[:19]}…)"
    if target.drift is not None:
        observed = evidence_time(target.drift.decided_at)
        seen += f"; agent observed {target.drift.result} at {observed} ({target.drift.evidence[:19]}…)"
    return seen


COMMANDS: dict[str, Register] = {"status": add_status}
