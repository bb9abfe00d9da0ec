"""The plumbing every `stella` command shares: exit codes, options, output, and errors turned into exits.

Commands print through `emit` (one JSON object with `-o json`, else text) and `say`; rich consoles are
made on first use, so that a command that never draws one does not pay for importing rich. `run` maps
the error hierarchy to exit codes (DESIGN §5); `guarded_stdout` turns a stdout that cannot be written
into one line on stderr (exit 2), or into silence and `BROKEN_PIPE` when the reader has gone. Nothing
here knows any command; it must stay cheap to import (it is on the path of `stella --help`).
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeAlias, cast

from ..errors import InvalidInput, Problem, StellaError, ValidationFailed

if TYPE_CHECKING:
    from rich.console import Console

OK, NOT_OK, INVALID, TRANSIENT = 0, 1, 2, 3
BROKEN_PIPE = 128 + 13
"""Whoever read stdout stopped early (`stella … | head`): 128 + SIGPIPE, what shells report for `cat`."""
MAX_INPUT = 1 << 20
"""The most bytes read from a file named on the command line (a checkpoint is a few KB)."""


class Usage(InvalidInput):
    """Bad command-line usage."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit 2 with `stella: error: …` on stderr."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        err().print(f"stella: error: {message}", markup=False)
        raise SystemExit(INVALID)


Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"
Register: TypeAlias = Callable[[Subcommands, Parser], None]
"""Adds one top-level command (its parser, its sub-commands, its handler) under the given sub-parsers;
the second argument is the parent parser of the global options, for every parser it adds."""


def common_options(defaults: bool) -> Parser:
    """Global options, accepted before or after the command (sub-parsers must not reset them)."""

    def d(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    common = Parser(add_help=False)
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


# --- output --------------------------------------------------------------------------------------


@functools.cache
def err() -> Console:
    """The rich console on stderr (made on first use)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@functools.cache
def out() -> Console:
    """The rich console on stdout (made on first use; it writes to whatever `sys.stdout` is then)."""
    from rich.console import Console

    return Console(highlight=False)


def emit(args: argparse.Namespace, payload: dict[str, Any], text: Callable[[], None]) -> None:
    """`payload` as one JSON object with `-o json`, else whatever `text` prints."""
    if args.output == "json":
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        text()


def say(message: str) -> None:
    print(message)


def repo_root(args: argparse.Namespace) -> Path:
    return Path(args.repo).resolve()


def os_reason(exc: OSError, path: object = None) -> str:
    """The system's reason for `exc`, and the files it concerns when they are not `path` itself."""
    reason = exc.strerror or str(exc)
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None and str(f) != str(path)]
    return f"{reason} ({', '.join(files)})" if files else reason


def read_input(path: str, what: str) -> bytes:
    """At most `MAX_INPUT` bytes of `path` (a pipe or a device too, such as `/dev/stdin`)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_INPUT + 1)
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the {what}: {os_reason(exc, path)}") from exc
    if len(data) > MAX_INPUT:
        raise InvalidInput(f"{path}: the {what} is larger than {MAX_INPUT} bytes")
    return data


# --- running a command ---------------------------------------------------------------------------


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


def guarded_stdout(command: Callable[[], int]) -> int:
    """Run `command` with a stdout whose write errors are told apart: when it cannot be written, one line
    on stderr and exit 2, never a traceback; when its reader has gone, silence and `BROKEN_PIPE`."""
    stdout = sys.stdout
    if stdout is None:  # started with stdout closed (`stella … >&-`): print() writes nowhere
        return command()
    sys.stdout = cast(TextIO, _Output(stdout))
    try:
        try:
            return command()
        finally:
            sys.stdout.flush()  # now, not at exit, where the interpreter could only ignore its errors
    except _OutputError as exc:
        _discard(stdout)
        if exc.errno == errno.EPIPE:
            return BROKEN_PIPE
        err().print(f"error: cannot write the output: {exc.strerror}", markup=False, soft_wrap=True)
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


def run(args: argparse.Namespace) -> int:
    """Run the handler the parser chose; every error Stella reports on purpose becomes its exit code."""
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
        err().print("interrupted")
        return 130
    except _OutputError:
        raise
    except OSError as exc:  # local I/O (a path, a permission, the disk): exit 2, not 3 (infrastructure)
        path = exc.filename
        message = os_reason(exc) if path is None else f"{path}: {os_reason(exc, path)}"
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
    err().print(f"error: {exc.diagnostics()}", markup=False, soft_wrap=True)
