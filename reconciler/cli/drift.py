"""`stella drift [ENV] [--target T]`: what runs on each target against what should run (DESIGN §9).

What should run is read as `stella status` reads it (`reconciler.drift.read_expected`: the environment's
newest allowed, verified decision and its lock); what runs, from each target's engine, opened through
its agent plugin, with one `running(project)` call per target; `reconciler.drift.compare` says how they
differ. A target with nothing allowed yet is not contacted.

Prints one line per drift item and one per target that is in sync, unreachable or has nothing to run;
`-o json`: `{"items": [...], "targets": [{"name", "environment", "state", "reason"}]}` (docs/drift.md).
Exit codes: 1 some drift; else 3 some target's engine could not be reached; else 0; 2 an environment
or target the ratified policy does not have (or a target whose agent plugin or endpoint is unusable).
The evidence machinery and the plugins are imported by the handler, never here.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ._app import NOT_OK, OK, TRANSIENT, Parser, Register, Subcommands, emit, repo_root, say

if TYPE_CHECKING:
    from ..discover import Plugins
    from ..drift import DriftItem, Expected

TargetState = Literal["in-sync", "drifted", "unreachable", "nothing-to-run"]


@dataclass
class _Checked:
    name: str
    environment: str
    state: TargetState
    reason: str
    items: list[DriftItem] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "environment": self.environment,
            "state": self.state,
            "reason": self.reason,
        }


def add_drift(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser(
        "drift",
        parents=[common],
        help="what runs on each target against what should run; exit 1 on drift",
    )
    p.add_argument("environment", nargs="?", metavar="ENV", help="only this environment")
    p.add_argument("--target", metavar="T", help="only this target")
    p.set_defaults(func=cmd_drift)


def cmd_drift(args: argparse.Namespace) -> int:
    from ..discover import discover
    from ..drift import read_expected
    from ..repo import Repo

    expected = read_expected(Repo(repo_root(args)), args.environment, args.target)
    wanted = any(e.lock is not None for e in expected)
    plugins = discover(offline=args.offline, kinds=("agents",)) if wanted else None
    checked = [_check(e, plugins) for e in expected]
    items = [item for c in checked for item in c.items]
    payload = {"items": [i.as_json() for i in items], "targets": [c.as_json() for c in checked]}
    emit(args, payload, lambda: _print(checked))
    if items:
        return NOT_OK
    return TRANSIENT if any(c.state == "unreachable" for c in checked) else OK


def _check(expected: Expected, plugins: Plugins | None) -> _Checked:
    """One target: its engine's containers of the project against its lock."""
    from ..drift import compare
    from ..errors import Transient

    target = expected.target
    if expected.lock is None or plugins is None:
        reason = f"nothing allowed in {target.environment} yet"
        return _Checked(target.name, target.environment, "nothing-to-run", reason)
    plugin = plugins.agent(expected.agent)
    try:
        engine = plugin.open(target, os.environ)
        try:
            containers = engine.running(target.project)
        finally:
            engine.close()
    except Transient as exc:
        return _Checked(target.name, target.environment, "unreachable", str(exc))
    items = compare(target.name, expected.lock, containers)
    if not items:
        reason = f"runs {expected.release} as it should"
        return _Checked(target.name, target.environment, "in-sync", reason)
    reason = f"{len(items)} difference(s) from {expected.release}"
    return _Checked(target.name, target.environment, "drifted", reason, items)


def _print(checked: list[_Checked]) -> None:
    if not checked:
        say("no targets")
    for target in checked:
        where = f"{target.environment}/{target.name}"
        for item in target.items:
            container = f" (container {item.container[:12]})" if item.container else ""
            say(
                f"{where} {item.service or '(no service)'} {item.kind}: "
                f"expected {item.expected or '-'}, actual {item.actual or '-'}{container}"
            )
        if target.state != "drifted":
            say(f"{where}: {target.state} ({target.reason})")


COMMANDS: dict[str, Register] = {"drift": add_drift}
