"""Applying a verified lock to a target's engine: pull every image by digest, store the lock, bring the
Compose project to it, and check what then runs.

Steps stop at the first failure (a digest the registry does not serve faithfully starts nothing). The
lock is stored content-addressed under the state directory (`artifacts/<hex>/compose.stella.lock.yml`)
and never overwritten. Secrets (`env:NAME`, `file:/path` in the environment) are resolved here, handed to
the engine as the process environment of `up` only, and redacted from every output this module returns;
they are never written. `up` also gets `STELLA_STATE_DIR`, the absolute path of the state directory (not a
secret: the lock's `${STELLA_STATE_DIR}/…` bind sources), and labels every service's containers with the
hash of the files it mounts from there (`drift.config_labels`), which `stella drift` compares later.
Talks to the engine only through the `Engine` Protocol.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .. import drift, render
from ..errors import InvalidInput
from ..evidence import sha256_hex
from ..models import Environment
from ..protocols import DeployStep, Engine, RunningContainer
from ..reference import parse

REDACTED = "[redacted]"


@dataclass
class Applied:
    """How applying went: each step, what runs afterwards, and the verdict."""

    steps: list[DeployStep] = field(default_factory=list)
    containers: list[RunningContainer] = field(default_factory=list)
    ok: bool = False
    reason: str = ""


def lock_path(state_dir: Path, lock: bytes) -> Path:
    """Where the lock is stored: named by its hash, written once (a different file there is refused)."""
    digest = sha256_hex(lock)
    path = state_dir / "artifacts" / digest / render.LOCK_FILE
    if path.exists():
        if sha256_hex(path.read_bytes()) != digest:
            raise InvalidInput(f"{path}: holds other bytes than its name says; remove it to deploy again")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(lock)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def resolve_secrets(environment: Environment, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment's secrets as `NAME=value` for the engine, read on the agent (never stored)."""
    values: dict[str, str] = {}
    for name, ref in sorted(environment.secrets.items()):
        if ref.startswith("env:"):
            value = environ.get(ref[4:])
            if value is None:
                raise InvalidInput(f"secret {name}: {ref[4:]} is not set in the agent's environment")
        elif ref.startswith("file:"):
            try:
                value = Path(ref[5:]).read_text().rstrip("\n")
            except OSError as exc:
                raise InvalidInput(f"secret {name}: cannot read {ref[5:]}: {exc.strerror or exc}") from exc
        else:
            raise InvalidInput(f"secret {name}: {ref!r} is neither env:NAME nor file:/path")
        values[name] = value
    return values


def redact(text: str, secrets: Mapping[str, str]) -> str:
    for value in sorted(secrets.values(), key=len, reverse=True):
        if value:
            text = text.replace(value, REDACTED)
    return text


def _clean(step: DeployStep, secrets: Mapping[str, str]) -> DeployStep:
    return DeployStep(
        step.stage,
        redact(step.command, secrets),
        step.exit_code,
        redact(step.output, secrets),
        step.started_at,
        step.completed_at,
    )


def apply(
    engine: Engine,
    *,
    project: str,
    lock: bytes,
    state_dir: Path,
    environment: Environment,
    environ: Mapping[str, str],
    timeout: float,
) -> Applied:
    """Pull, store, up, inspect. Never raises for a failed step: the verdict is in `Applied`."""
    applied = Applied()
    secrets = resolve_secrets(environment, environ)
    images = render.lock_images(lock)
    for image in images:
        step = _clean(engine.pull(image), secrets)
        applied.steps.append(step)
        if not step.ok:
            applied.reason = f"pulling {image} failed: {_last_line(step.output)}"
            return applied
    path = lock_path(state_dir, lock)
    environ_up = {**secrets, render.STATE_DIR_VAR: os.path.abspath(state_dir)}  # the agent's value wins
    labels = drift.config_labels(lock, state_dir)
    step = _clean(engine.up(project, path, environ_up, timeout, labels=labels), secrets)
    applied.steps.append(step)
    started = datetime.now(UTC)
    applied.containers = engine.running(project)
    expected = {parse(image).digest for image in images}
    wrong = [c for c in applied.containers if c.digest not in expected or c.state != "running"]
    applied.steps.append(
        DeployStep(
            "inspect",
            f"list the containers of project {project}",
            0 if not wrong else 1,
            "\n".join(f"{c.service} {c.container[:12]} {c.state} {c.digest}" for c in applied.containers),
            started,
            datetime.now(UTC),
        )
    )
    if not step.ok:
        applied.reason = f"compose up failed: {_last_line(step.output)}"
        return applied
    if wrong:
        applied.reason = "; ".join(
            f"service {c.service} runs {c.digest} ({c.state}), not a digest of the lock" for c in wrong
        )
        return applied
    if not applied.containers:
        applied.reason = "compose up left no container of the project running"
        return applied
    applied.ok = True
    return applied


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
