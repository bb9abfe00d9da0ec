"""Commands of the server-side guard: `hook pre-receive` (what git runs on every push) and
`hook install`.

`hook pre-receive` runs on every push the server takes, so its path is kept short: the guard in
`reconciler.hook` is imported by the handler, and loads the rest of the core only for a push that
touches a guarded ref. It fails closed: anything it cannot check rejects the push, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import StellaError
from ._app import NOT_OK, OK, TRANSIENT, Parser, Register, Subcommands, emit, say


def add_hook(sub: Subcommands, common: Parser) -> None:
    hook_parser = sub.add_parser("hook", parents=[common], help="server-side guard for a bare repository")
    hsub = hook_parser.add_subparsers(dest="hook_command", required=True, parser_class=Parser)
    p = hsub.add_parser("pre-receive", parents=[common], help="check the ref updates git gives on stdin")
    p.set_defaults(func=cmd_hook_pre_receive)
    p = hsub.add_parser("install", parents=[common], help="install hooks/pre-receive in a repository")
    p.add_argument("bare_repo", metavar="BARE_REPO")
    p.add_argument("--force", action="store_true", help="replace an existing, different pre-receive hook")
    p.set_defaults(func=cmd_hook_install)


def _stella_command() -> list[str]:
    """This `stella`, by absolute path: the console script beside the interpreter, else `python -m`."""
    python = Path(os.path.abspath(sys.executable))
    script = python.parent / "stella"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(python), "-P", "-m", "reconciler.cli"]


def cmd_hook_pre_receive(args: argparse.Namespace) -> int:
    from .. import hook

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
    from .. import hook

    done = hook.install(Path(args.bare_repo), [*_stella_command(), "hook", "pre-receive"], force=args.force)
    command = " ".join(done.command)
    emit(
        args,
        {"hook": str(done.path), "command": list(done.command), "changed": done.changed},
        lambda: say(f"{'installed' if done.changed else 'already installed'}: {done.path} (runs {command})"),
    )
    return OK


COMMANDS: dict[str, Register] = {"hook": add_hook}
