"""The `stella` command: the only place that prints or exits.

Exit codes (DESIGN §5): 0 success; 1 the thing checked is not OK; 2 invalid input, config or usage
(the message names the file and line); 3 infrastructure failure after retries. `-o json` output is
stable: every command prints one JSON object on stdout, documented in docs/cli.md.

The commands live by area, each module declaring its parsers beside their handlers (`COMMANDS`):
`manifests` (validate, release, keys, init), `workflow` (promote, approve, policy), `passes`
(reconcile, plan, why, usage), `audit` (audit, replay), `hook`, `doctor`, `demo`, `agent`, `status`,
`drift` and `fleet` (fleet migrate, fleet token); `_app` is the shared plumbing. Building the parser
imports no part of the core: each handler imports what it needs, so that `stella --help` and the
pre-receive hook start fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..version import __version__
from . import agent, audit, demo, doctor, drift, fleet, hook, manifests, passes, status, workflow
from ._app import (
    BROKEN_PIPE,
    INVALID,
    MAX_INPUT,
    NOT_OK,
    OK,
    TRANSIENT,
    Parser,
    Register,
    Usage,
    common_options,
    guarded_stdout,
    run,
)
from .passes import plan_markdown

__all__ = [
    "BROKEN_PIPE",
    "INVALID",
    "MAX_INPUT",
    "NOT_OK",
    "OK",
    "TRANSIENT",
    "Usage",
    "build_parser",
    "main",
    "plan_markdown",
]

_ORDER = (
    "validate",
    "release",
    "promote",
    "rollback",
    "approve",
    "plan",
    "policy",
    "why",
    "usage",
    "status",
    "drift",
    "replay",
    "audit",
    "hook",
    "doctor",
    "reconcile",
    "agent",
    "fleet",
    "keys",
    "init",
    "demo",
    "serve",
    "worker",
)
"""The order `stella --help` lists the commands in."""


def _commands() -> dict[str, Register]:
    """Every top-level command of every area, in `_ORDER` (a command missing there fails loudly)."""
    areas = (manifests, workflow, passes, audit, hook, doctor, demo, agent, status, drift, fleet)
    found = [(name, add) for area in areas for name, add in area.COMMANDS.items()]
    return dict(sorted(found, key=lambda command: _ORDER.index(command[0])))


def build_parser() -> argparse.ArgumentParser:
    top, common = common_options(True), common_options(False)
    parser = Parser(prog="stella", description="GitOps release orchestrator", parents=[top])
    parser.add_argument("--version", action="version", version=f"stella {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in _commands().values():
        add(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. When stdout cannot be written, one line on stderr and exit 2, never a traceback;
    when its reader has gone (`stella … | head`), silence and `BROKEN_PIPE`."""
    return guarded_stdout(lambda: run(build_parser().parse_args(argv)))
