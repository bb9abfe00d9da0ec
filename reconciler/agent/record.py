"""Deployment evidence: one signed record per attempt, chained per target, pushed by compare-and-swap.

A record (`type: deployment`) names the target, the decision it carried out, the policy in force, the
result (`succeeded` or `failed`, with why), every step (stage, command, exit code, output tail, times),
the containers seen running with their digests, and the lock (an artifact, the one the decision named).
It is canonical JSON signed by the agent's key (`trust/agent-keys/<target>.pub` of that policy verifies
it). The files (statement, bundle, `targets/<env>/<target>/stella.version.json`) are kept under the state
directory until they are on the source (`pending/`), so a crash between deploying and pushing loses no
record: the next run pushes them first. A lost race commits the same files again on the new head: only
this target's agent writes this target's chain, so the record stays valid.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, Transient
from ..evidence import GENERATOR, PREDICATE_TYPE, STATEMENT_TYPE, sha256_hex
from ..ledger import (
    DEPLOYMENT,
    bundle_path,
    evidence_path,
    rfc3339,
    target_pointer_path,
)
from ..protocols import AgentTarget, DeployStep, RunningContainer, Signer
from ..render import LOCK_FILE
from ..repo import RaceLost
from ..version import __version__
from .mirror import Mirror, PushRefused

log = logging.getLogger(__name__)

MAX_PUSHES = 10
PENDING = "pending"
REFUSED = "refused"
OUTGOING = "refs/stella/outgoing"
"""Where the mirror keeps the commit it is about to push (its evidence ref moves only by fetching)."""


def deployment_statement(
    *,
    tenant: str,
    target: AgentTarget,
    agent: str,
    decision: str,
    release: Mapping[str, Any],
    policy: Mapping[str, str],
    result: str,
    reason: str,
    steps: list[DeployStep],
    containers: list[RunningContainer],
    lock: bytes,
    images: list[str],
    started_at: datetime,
    completed_at: datetime,
    previous: str | None,
    kind: str = DEPLOYMENT,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The in-toto statement of one deployment attempt (a plain value; `canonical()` makes its bytes).
    `kind` is `deployment` or `rollback`; `extra` adds predicate fields (`rollout`, `rollback`)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects_of(images),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            **(extra or {}),
            "type": kind,
            "tenant": tenant,
            "generator": {"name": GENERATOR, "version": __version__},
            "environment": target.environment,
            "target": {"name": target.name, "project": target.project, "agent": agent},
            "decision": decision,
            "release": dict(release),
            "policy": dict(policy),
            "result": result,
            "reason": reason,
            "steps": [
                {
                    "stage": s.stage,
                    "command": s.command,
                    "exitCode": s.exit_code,
                    "output": s.output,
                    "startedAt": rfc3339(s.started_at),
                    "completedAt": rfc3339(s.completed_at),
                }
                for s in steps
            ],
            "containers": [
                {"service": c.service, "container": c.container, "image": c.image, "digest": c.digest}
                for c in sorted(containers, key=lambda c: (c.service, c.container))
            ],
            "artifacts": [{"name": LOCK_FILE, "sha256": sha256_hex(lock)}],
            "startedAt": rfc3339(started_at),
            "completedAt": rfc3339(completed_at),
            "previous": previous,
        },
    }


def subjects_of(images: list[str]) -> list[dict[str, Any]]:
    """Each image the lock runs, as an in-toto subject (`repo` + its sha256)."""
    out = []
    for image in sorted(set(images)):
        name, _, digest = image.partition("@")
        out.append({"name": name, "digest": {"sha256": digest.removeprefix("sha256:")}})
    return out


def stage(state_dir: Path, statement: bytes, signer: Signer, sticker: bytes, target: AgentTarget) -> str:
    """Sign the record and keep its files under `pending/<hex>/` until pushed; its evidence id."""
    hex_id = sha256_hex(statement)
    directory = state_dir / PENDING / hex_id
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        evidence_path(hex_id): statement,
        bundle_path(hex_id): signer.sign(statement),
        target_pointer_path(target.environment, target.name): sticker,
    }
    staged = directory / "files.json.tmp"
    staged.write_text(json.dumps({path: data.decode() for path, data in files.items()}, sort_keys=True))
    os.replace(staged, directory / "files.json")  # whole or absent: a crash leaves nothing half-staged
    return f"sha256:{hex_id}"


def push_pending(mirror: Mirror, state_dir: Path) -> tuple[list[str], list[str]]:
    """Push every staged record not on the source yet, oldest first; (ids pushed, ids refused). A record
    the source refuses outright (its hook declines it) is moved to `refused/` with why, and logged."""
    root = state_dir / PENDING
    if not root.is_dir():
        return [], []
    pushed: list[str] = []
    refused: list[str] = []
    for directory in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime):
        staged = directory / "files.json"
        if not staged.is_file():  # a crash while signing: nothing of it was deployed as recorded
            shutil.rmtree(directory)
            continue
        files = {path: text.encode() for path, text in json.loads(staged.read_text()).items()}
        try:
            _push(mirror, files, f"stella agent: deployment record sha256:{directory.name}\n")
        except PushRefused as exc:
            log.error("deployment record sha256:%s: %s", directory.name, exc)
            kept = state_dir / REFUSED / directory.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            (directory / "refused.txt").write_text(f"{exc}\n")
            shutil.rmtree(kept, ignore_errors=True)
            directory.rename(kept)
            refused.append(f"sha256:{directory.name}")
            continue
        shutil.rmtree(directory)
        pushed.append(f"sha256:{directory.name}")
    return pushed, refused


def _push(mirror: Mirror, files: Mapping[str, bytes], message: str) -> None:
    for _ in range(MAX_PUSHES):
        head = mirror.fetch()
        if head is None:
            raise InvalidInput(f"{mirror.url}: {mirror.ref} is gone: nowhere to record the deployment")
        repo = mirror.repo()
        present = all(
            repo.tree(head).read(path) == data for path, data in files.items() if path.startswith("evidence/")
        )
        if present:
            return  # pushed by an earlier run that stopped before forgetting it
        outgoing = repo.resolve_ref(OUTGOING)  # never the mirror's ref: it only follows the source
        commit = repo.commit_files(OUTGOING, outgoing, dict(files), message, parent=head)
        try:
            mirror.push(commit)
            return
        except RaceLost:
            continue
    raise Transient(f"{mirror.url}: {mirror.ref} kept moving: gave up after {MAX_PUSHES} attempts")
