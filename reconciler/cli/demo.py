"""`stella demo`: the whole flow on a copy of `example-repo/`, offline, on a fixed clock.

The steps are `reconciler.demo`'s; this module finds the example repository, prints each step as it
completes (or all of them as JSON at the end), and imports the demo only when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ._app import NOT_OK, OK, Parser, Register, Subcommands, Usage, out


def add_demo(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser("demo", parents=[common], help="the whole flow on a copy of example-repo/")
    p.add_argument(
        "--keep",
        metavar="DIR",
        help="work in DIR (new or empty) and leave it there, to look at the evidence branch afterwards",
    )
    p.set_defaults(func=cmd_demo)


def _example_repo() -> Path:
    """`STELLA_EXAMPLE_REPO`, else `example-repo/` beside the package (in a source checkout)."""
    here = Path(__file__).resolve().parent.parent.parent / "example-repo"
    override = os.environ.get("STELLA_EXAMPLE_REPO")
    path = Path(override) if override else here
    if not (path / "stella.yaml").is_file():
        raise Usage(f"{path}: example repository not found (set STELLA_EXAMPLE_REPO)")
    return path


def _docker_host() -> str:
    """The Docker Engine the demo's agent drives: `DOCKER_HOST`, else the usual socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from .. import demo

    steps = []
    example = _example_repo()
    kept = demo.keep_directory(Path(args.keep)) if args.keep is not None else None
    console = out()
    if args.output != "json":
        console.print(demo.clock_line(), markup=False, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="stella-demo-") as tmp:
        for number, step in enumerate(
            demo.steps(example, kept or Path(tmp), docker_host=_docker_host()), start=1
        ):
            steps.append(step)
            if args.output == "json":
                continue
            console.print(f"\n[bold]{number}. {step.title}[/bold]")
            console.print(step.detail, markup=False, style="dim")
            for line in step.lines:
                console.print(f"  {line}", markup=False, soft_wrap=True)
    if args.output == "json":
        print(json.dumps([{"title": s.title, "ok": s.ok, "lines": s.lines} for s in steps], indent=2))
    elif kept is not None:
        console.print()
        for line in demo.kept(kept):
            console.print(line, markup=False, soft_wrap=True)
    return OK if all(s.ok for s in steps) else NOT_OK


COMMANDS: dict[str, Register] = {"demo": add_demo}
