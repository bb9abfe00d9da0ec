"""The trust checks: `policy` (the ratified policy and any proposed change), `signing-key` (the evidence
signing key and whether the branch trusts it) and `allowed-signers` (every line ssh-keygen accepts).

Must not: write anything (ssh-keygen gets a temporary directory of its own, never the repository), or
read a private key beyond deriving its public key and hint.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from ..identity import ALLOWED_SIGNERS
from ..models import Repository, Settings
from ..repo import GitTree, Repo
from ..sign import key_hint, load_private_key, load_public_key, resolve_key_path
from .result import Check, Status, error_text, worse

KEYS_DIR = "trust/evidence-keys"


def ratified_view(repo: Repo, settings: Settings | None, tree: GitTree) -> Any:
    """The branch as decisions read it (governed files from the ratified policy), or None before any
    genesis (or when the branch's settings cannot be read)."""
    from ..chain import evidence_ref
    from ..governance import PolicyView, read_pointer, stored_policy

    if settings is None:
        return None
    head = repo.resolve_ref(evidence_ref(repo, settings))
    evidence = repo.tree(head) if head else None
    pointer = read_pointer(evidence) if evidence is not None else None
    if evidence is None or pointer is None or not isinstance(pointer.get("id"), str):
        return None
    try:
        return PolicyView(stored_policy(evidence, pointer["id"]), tree)
    except InvalidInput:
        return None


def policy_check(view: Any, tree: GitTree, settings: Settings) -> Check:
    """The ratified policy, whether the branch proposes another, and whether anyone can ratify one."""
    from ..governance import Policy, governed_files
    from ..manifests import load_settings

    ratified = view.policy
    proposed = Policy.of(governed_files(tree))
    governance = load_settings(view).governance
    notes: list[str] = []
    status: Status = "ok"
    if governance is None:
        status = "warn"
        notes.append("the ratified stella.yaml has no `governance:`: nobody can ratify a policy change")
    else:
        groups = ", ".join(governance.groups)
        notes.append(f"policy changes need {governance.required} approval(s) from {groups}")
    if proposed.id != ratified.id:
        status = "warn"
        changed = ", ".join(proposed.changed_from(ratified)[:5])
        notes.append(
            f"the branch proposes policy {proposed.id} ({changed}): decisions stay under the ratified one "
            "until it is approved (`stella policy status`)"
        )
    return Check("policy", status, f"ratified policy {ratified.id}", tuple(notes))


def signing_key_check(settings: Settings | None, tree: GitTree | None, environ: Mapping[str, str]) -> Check:
    name = "signing-key"
    signer = settings.signer if settings is not None else None
    if signer is not None and signer.plugin != "key":
        return Check(name, "ok", f"the signer is {signer.plugin!r}: no managed evidence key to check")
    reference = signer.key if signer is not None else "env:STELLA_SIGNING_KEY"
    try:
        path = resolve_key_path(reference, environ)
    except InvalidInput as exc:
        return Check(name, "fail", str(exc))
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        with path.open("rb"):
            pass
    except OSError as exc:
        return Check(name, "fail", f"{path}: cannot read the signing key: {exc.strerror or exc}")
    try:
        public = load_private_key(path).public_key()
    except InvalidInput as exc:
        return Check(name, "fail", str(exc))
    hint = key_hint(public)
    notes: list[str] = []
    status: Status = "ok"
    if mode & 0o077:
        status = "warn"
        notes.append(f"{path} has mode {mode:04o}: group or others can read it; run `chmod 600 {path}`")
    if tree is None:
        notes.append(f"not compared with {KEYS_DIR}/: the repository cannot be read")
        return Check(name, worse(status, "warn"), f"{path}: P-256 key, hint {hint}", tuple(notes))
    trusted, bad = _trusted_keys(tree)
    notes += bad
    if hint not in trusted:
        message = (
            f"{path}: its public key (hint {hint}) is not in {KEYS_DIR}/ on the branch: the records it "
            f"signs would not verify; commit {path}.pub (or the output of `stella keys generate`) there"
        )
        return Check(name, "fail", message, tuple(notes))
    if bad:
        status = "fail"
    message = f"{path}: P-256 key, hint {hint}, trusted by {trusted[hint]}"
    return Check(name, status, message, tuple(notes))


def _trusted_keys(tree: GitTree) -> tuple[dict[str, str], list[str]]:
    """(hint -> file) of the trusted evidence keys, and a problem for each unreadable key file."""
    trusted: dict[str, str] = {}
    bad: list[str] = []
    for file_name in sorted(tree.listdir(KEYS_DIR)):
        if not file_name.endswith(".pub"):
            continue
        source = f"{KEYS_DIR}/{file_name}"
        try:
            trusted.setdefault(key_hint(load_public_key(tree.read(source) or b"", source)), source)
        except InvalidInput as exc:
            bad.append(f"{exc} (`stella audit verify` refuses to run with it)")
    return trusted, bad


def allowed_signers_check(tree: GitTree, repository: Repository | None) -> Check:
    name = "allowed-signers"
    needing = sorted(
        env
        for env, environment in (repository.environments.items() if repository else ())
        if any(
            policy is not None and policy.required > 0
            for policy in (environment.approvals, environment.rollbackApprovals)
        )
    )
    raw = tree.read(ALLOWED_SIGNERS)
    lines = [
        (number, line.strip())
        for number, line in enumerate((raw or b"").decode("utf-8", "replace").splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not lines:
        what = "does not exist" if raw is None else "lists no keys"
        if needing:
            message = (
                f"{ALLOWED_SIGNERS} {what}: no approval can be verified, and environments "
                f"{', '.join(needing)} require approvals"
            )
            return Check(name, "warn", message)
        return Check(name, "ok", f"{ALLOWED_SIGNERS} {what} (no environment requires approvals)")
    problems = [
        f"{ALLOWED_SIGNERS}:{number}: expected `<identity> [options] <key type> <base64 key>`"
        for number, line in lines
        if len(line.split()) < 3
    ]
    accepted = _ssh_keygen_problems(raw or b"")
    if accepted is None:
        status: Status = "fail" if problems else "warn"
        message = f"{len(lines)} line(s); ssh-keygen is not installed: approvals cannot be verified"
        return Check(name, status, message, tuple(problems))
    problems += [p for p in accepted if p not in problems]
    if problems:
        message = f"{len(problems)} problem(s) in {len(lines)} line(s), first: {problems[0]}"
        return Check(name, "fail", message, tuple(problems))
    return Check(name, "ok", f"{len(lines)} signer(s); ssh-keygen accepts every line")


def _ssh_keygen_problems(allowed: bytes) -> list[str] | None:
    """What ssh-keygen says is wrong with an allowed-signers file (None: no ssh-keygen).

    ssh-keygen parses the whole file when it looks for the signer of a signature no line matches:
    a throwaway key signs a throwaway message in a temporary directory, and each line it cannot parse
    is reported as `<file>:<line>: <why>`.
    """
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        return None
    with tempfile.TemporaryDirectory(prefix="stella-doctor-") as tmp:
        allowed_path, key, message = Path(tmp) / "allowed_signers", Path(tmp) / "key", Path(tmp) / "message"
        allowed_path.write_bytes(allowed)
        message.write_bytes(b"stella doctor\n")

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([keygen, *argv], capture_output=True, text=True, timeout=30, check=False)

        try:
            run("-q", "-t", "ed25519", "-N", "", "-C", "stella-doctor", "-f", str(key))
            run("-Y", "sign", "-f", str(key), "-n", "stella-doctor", str(message))
            found = run("-Y", "find-principals", "-f", str(allowed_path), "-s", f"{message}.sig")
        except (OSError, subprocess.SubprocessError) as exc:
            return [f"{ALLOWED_SIGNERS}: ssh-keygen could not check it: {error_text(exc)}"]
    pattern = re.compile(rf"^{re.escape(str(allowed_path))}:(\d+): (.+)$")
    problems = []
    for line in found.stderr.splitlines():
        match = pattern.match(line.strip())
        if match:
            problems.append(f"{ALLOWED_SIGNERS}:{match[1]}: ssh-keygen: {match[2]}")
    return problems
