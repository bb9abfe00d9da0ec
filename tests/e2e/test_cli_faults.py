"""Local I/O faults through the real `stella` command: one `error: …` line and an exit code, never a traceback.

A reader that goes away (`stella … | head -c1`) ends the command quietly with 141 (128 + SIGPIPE, what a
shell reports for `cat` in the same pipe); a stdout that cannot be written (`> /dev/full`), a directory
that cannot be written and an unreadable or oversized input file exit 2 with the path in the message.
Commands run both with a buffered stdout and with PYTHONUNBUFFERED=1, so that a write fails while the
command runs or only at the last flush.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.cli import MAX_INPUT
from tests.support.cli import STELLA, Run, stella
from tests.support.repos import make_repo

WRITERS = [
    pytest.param(("validate", "-o", "json"), id="validate-json"),
    pytest.param(("validate",), id="validate-text"),
    pytest.param(("doctor", "--offline"), id="doctor-rich"),
]
BUFFERING = [
    pytest.param({"PYTHONUNBUFFERED": ""}, id="buffered"),
    pytest.param({"PYTHONUNBUFFERED": "1"}, id="unbuffered"),
]


def _env(extra: dict[str, str]) -> dict[str, str]:
    """The environment with `extra` applied; an empty value removes the variable."""
    env = {**os.environ, **extra}
    return {name: value for name, value in env.items() if value or name not in extra}


def _run(
    argv: tuple[str, ...], *, cwd: Path, stdout: int, env: dict[str, str], stdin: bytes | None = None
) -> Run:
    done = subprocess.run(
        [STELLA, *argv],
        cwd=cwd,
        env=_env(env),
        stdout=stdout,
        stderr=subprocess.PIPE,
        input=stdin,
        timeout=120,
    )
    return Run(done.returncode, "", done.stderr.decode("utf-8", "replace"))


@pytest.mark.parametrize("buffering", BUFFERING)
@pytest.mark.parametrize("argv", WRITERS)
def test_a_reader_that_went_away_ends_the_command_quietly(
    tmp_path: Path, argv: tuple[str, ...], buffering: dict[str, str]
) -> None:
    make_repo(tmp_path)
    read, write = os.pipe()
    os.close(read)  # as `| head -c1` does once it has its byte, but before the first write: no race
    try:
        run = _run(argv, cwd=tmp_path, stdout=write, env=buffering)
    finally:
        os.close(write)
    assert (run.code, run.err) == (141, "")  # no traceback, no "Exception ignored … BrokenPipeError"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("buffering", BUFFERING)
@pytest.mark.parametrize("argv", WRITERS)
def test_a_full_disk_on_stdout_is_one_line_and_exit_2(
    tmp_path: Path, argv: tuple[str, ...], buffering: dict[str, str]
) -> None:
    make_repo(tmp_path)
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        run = _run(argv, cwd=tmp_path, stdout=fd, env=buffering)
    finally:
        os.close(fd)
    assert "Traceback" not in run.err
    assert (run.code, run.err) == (2, "error: cannot write the output: No space left on device\n")


def _report_into_file_child(tmp: Path) -> tuple[str, str]:
    (tmp / "a-file").write_text("")
    return str(tmp / "a-file" / "report"), "Not a directory"


def _report_into_a_file(tmp: Path) -> tuple[str, str]:
    (tmp / "a-file").write_text("")
    return str(tmp / "a-file"), "File exists"


def _report_into_proc(tmp: Path) -> tuple[str, str]:
    return "/proc/stella-report", "No such file or directory"


@pytest.mark.parametrize(
    "where",
    [_report_into_file_child, _report_into_a_file, _report_into_proc],
    ids=["parent-is-a-file", "dir-is-a-file", "under-proc"],
)
def test_audit_report_into_an_unwritable_directory(
    tmp_path: Path, where: Callable[[Path], tuple[str, str]]
) -> None:
    repo = tmp_path / "repo"
    make_repo(repo)
    target, reason = where(tmp_path)
    run = stella("audit", "report", target, "--repo", repo)
    assert "Traceback" not in run.err
    assert (run.code, run.out, run.err) == (2, "", f"error: {target}: cannot write the report: {reason}\n")


def test_audit_report_failure_is_a_json_error_too(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_repo(repo)
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "report"
    run = stella("audit", "report", target, "--repo", repo, "-o", "json")
    message = f"{target}: cannot write the report: Not a directory"
    assert (run.code, run.err) == (2, f"error: {message}\n")
    assert run.json() == {
        "error": "InvalidInput",
        "exitCode": 2,
        "message": message,
        "problems": [{"file": "-", "line": None, "message": message}],
    }


def test_keys_generate_creates_missing_parents(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "parents" / "key.pem"
    run = stella("keys", "generate", out)
    assert run.code == 0, run.err
    assert out.is_file() and out.with_name("key.pem.pub").is_file()


@pytest.mark.parametrize(
    ("relative", "reason"),
    [
        ("a-file/key.pem", "File exists ({tmp}/a-file)"),
        ("a-file/sub/key.pem", "Not a directory ({tmp}/a-file/sub)"),
        ("/proc/stella-key.pem", "No such file or directory"),
    ],
    ids=["parent-is-a-file", "grandparent-is-a-file", "under-proc"],
)
def test_keys_generate_into_an_unwritable_place(tmp_path: Path, relative: str, reason: str) -> None:
    (tmp_path / "a-file").write_text("")
    out = tmp_path / relative
    run = stella("keys", "generate", out)
    assert "Traceback" not in run.err
    expected = f"error: {out}: cannot write the key pair: {reason.format(tmp=tmp_path)}\n"
    assert (run.code, run.out, run.err) == (2, "", expected)


def _checkpoint_file(tmp: Path, size: int) -> str:
    path = tmp / f"checkpoint-{size}.json"
    path.write_bytes(b" " * size)
    return str(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: "/dev/zero", "{path}: the checkpoint is larger than 1048576 bytes"),
        (
            lambda tmp: _checkpoint_file(tmp, MAX_INPUT + 1),
            "{path}: the checkpoint is larger than 1048576 bytes",
        ),
        (lambda tmp: str(tmp), "{path}: cannot read the checkpoint: Is a directory"),
        (
            lambda tmp: str(tmp / "missing.json"),
            "{path}: cannot read the checkpoint: No such file or directory",
        ),
    ],
    ids=["dev-zero", "one-byte-too-many", "a-directory", "missing"],
)
def test_audit_verify_refuses_an_unreadable_or_oversized_checkpoint(
    tmp_path: Path, make: Callable[[Path], str], message: str
) -> None:
    path = make(tmp_path)
    run = stella("audit", "verify", "--checkpoint", path, cwd=tmp_path)
    assert "Traceback" not in run.err
    assert (run.code, run.out, run.err) == (2, "", f"error: {message.format(path=path)}\n")


def test_a_checkpoint_from_a_pipe_is_read_up_to_the_cap(tmp_path: Path) -> None:
    run = _run(
        ("audit", "verify", "--checkpoint", "/dev/stdin"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        env={},
        stdin=b"x" * (4 * MAX_INPUT),  # the command stops reading; the rest is never written
    )
    assert (run.code, run.err) == (2, "error: /dev/stdin: the checkpoint is larger than 1048576 bytes\n")


def test_a_checkpoint_of_exactly_the_cap_is_read(tmp_path: Path) -> None:
    make_repo(tmp_path)
    path = _checkpoint_file(tmp_path, MAX_INPUT)
    run = stella("audit", "verify", "--checkpoint", path, cwd=tmp_path)
    assert "Traceback" not in run.err
    assert run.code == 2 and "larger than" not in run.err and run.err.startswith(f"error: {path}: ")


@pytest.mark.parametrize(
    ("relative", "output"),
    [("a-file/acme", "text"), ("a-file/acme", "json"), ("/proc/stella-init", "text")],
    ids=["parent-is-a-file", "parent-is-a-file-json", "under-proc"],
)
def test_any_other_local_io_error_is_one_line_and_exit_2(tmp_path: Path, relative: str, output: str) -> None:
    """`init` does not catch OSError itself: `main()` turns it into `error: PATH: reason`, exit 2 (not 3)."""
    (tmp_path / "a-file").write_text("")
    target = tmp_path / relative
    run = stella("init", target, "-o", output, "--admin", "admin@example.com")
    reason = "Not a directory" if relative.startswith("a-file") else "No such file or directory"
    assert "Traceback" not in run.err
    assert (run.code, run.err) == (2, f"error: {target}: {reason}\n")
    if output == "json":
        message = f"{target}: {reason}"
        assert run.json() == {"error": "InvalidInput", "exitCode": 2, "message": message, "problems": []}
    else:
        assert run.out == ""
