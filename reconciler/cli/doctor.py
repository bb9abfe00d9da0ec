"""`stella doctor`: check the repository and this installation, and show every plugin's health.

The checks are `reconciler.doctor`'s; this module draws their result (a rich table on a terminal) or
prints it as JSON. Both the checks and rich are imported by the handler.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._app import INVALID, NOT_OK, OK, Parser, Register, Subcommands, emit, out, repo_root

if TYPE_CHECKING:
    from ..doctor import Diagnosis


def add_doctor(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser("doctor", parents=[common], help="check config, plugins, keys, Git access, evidence")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the repository and this installation; 1 when a check fails, 2 when the repository is unusable."""
    from .. import doctor

    diagnosis = doctor.diagnose(repo_root(args), offline=args.offline)
    payload = {
        "checks": [c.as_dict() for c in diagnosis.checks],
        "plugins": [p.as_dict() for p in diagnosis.plugins],
    }
    emit(args, payload, lambda: _print_doctor(diagnosis))
    if not diagnosis.usable:
        return INVALID
    return NOT_OK if diagnosis.failed else OK


def _print_doctor(diagnosis: Diagnosis) -> None:
    from rich.table import Table
    from rich.text import Text

    console = out()
    marks = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "red")}
    width = max((len(c.name) for c in diagnosis.checks), default=0)
    for c in diagnosis.checks:
        mark, style = marks[c.status]
        line = Text.assemble((mark, f"bold {style}"), f" {c.name:<{width}}  {c.message}")
        console.print(line, soft_wrap=True)
        for detail in c.details if c.status != "ok" else ():
            console.print(Text(f"    {detail}"), soft_wrap=True)
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
    console.print(table)
    for p in diagnosis.plugins:
        if p.reason:
            console.print(Text(f"  {p.group} {p.name}: {p.health}: {p.reason}"), soft_wrap=True)
    counts = {s: sum(c.status == s for c in diagnosis.checks) for s in ("ok", "warn", "fail")}
    console.print(f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failed", markup=False)


COMMANDS: dict[str, Register] = {"doctor": add_doctor}
